"""``quant_method: "awq"``: AutoAWQ's GEMM layout, 4-bit, asymmetric (zero points), groups along the input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sgl.core.quant.base import QuantizationMethod
from sgl.plugins.quant.checks import refuse_ignored_linears
from sgl.plugins.quant.int4_linear import Int4LinearMethod, Int4Scheme
from sgl.plugins.quant.int4_moe import Int4MoEMethod
from sgl.plugins.quant.kernel_methods import fast_int4_linear_method, fast_int4_moe_method

if TYPE_CHECKING:
    from sgl.core.model.linear_method import LinearMethod
    from sgl.core.model.moe_method import MoEMethod
    from sgl.core.platform import Capabilities

NAME = "awq"


def group_size(method: str, cfg: Mapping[str, Any]) -> int:
    group = cfg.get("group_size", cfg.get("q_group_size", 128))
    if not isinstance(group, int) or (group <= 0 and group != -1):
        raise ValueError(f"{method}: group_size must be a positive integer or -1; got {group!r}")
    return group


def require_4bit(method: str, cfg: Mapping[str, Any]) -> None:
    bits = cfg.get("bits", cfg.get("w_bit", 4))
    if bits != 4:
        raise ValueError(f"{method}: only 4-bit weights are supported; this checkpoint has {bits}-bit")


class AwqMethod(QuantizationMethod):
    def __init__(self, scheme: Int4Scheme) -> None:
        self.scheme = scheme

    @classmethod
    def from_config(cls, checkpoint_config: Mapping[str, Any]) -> AwqMethod:
        cfg = dict(checkpoint_config)
        if cfg.get("quant_method") != NAME:
            raise ValueError("--quantization awq needs an AWQ checkpoint (quantize with AutoAWQ; sgl does not "
                             "quantize to int4 at load)")
        require_4bit(NAME, cfg)
        version = str(cfg.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(f"awq: only the GEMM layout is supported; this checkpoint is {version!r}")
        if cfg.get("zero_point", True) is not True:
            raise ValueError("awq: checkpoints without zero points are not supported")
        refuse_ignored_linears(NAME, cfg.get("modules_to_not_convert"))
        return cls(Int4Scheme("awq", group_size(NAME, cfg)))

    def linear_method(self) -> LinearMethod:
        return Int4LinearMethod(self.scheme)

    def kernel_linear_method(self, capabilities: Capabilities) -> LinearMethod | None:
        return fast_int4_linear_method(self.scheme, capabilities)

    def moe_method(self) -> MoEMethod | None:
        return Int4MoEMethod(self.scheme)

    def kernel_moe_method(self, capabilities: Capabilities) -> MoEMethod | None:
        return fast_int4_moe_method(self.scheme, capabilities)
