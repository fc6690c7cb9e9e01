"""``quant_method: "gptq"``: AutoGPTQ / GPTQModel checkpoints, 4-bit, with or without ``desc_act`` (act order)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sgl.core.quant.base import QuantizationMethod
from sgl.plugins.quant.awq import group_size, require_4bit
from sgl.plugins.quant.checks import refuse_ignored_linears
from sgl.plugins.quant.int4_linear import Int4LinearMethod, Int4Scheme
from sgl.plugins.quant.int4_moe import Int4MoEMethod
from sgl.plugins.quant.kernel_methods import fast_int4_linear_method, fast_int4_moe_method

if TYPE_CHECKING:
    from sgl.core.model.linear_method import LinearMethod
    from sgl.core.model.moe_method import MoEMethod
    from sgl.core.platform import Capabilities

NAME = "gptq"
# NOTE: the original (v1) format stores each zero point minus one; GPTQModel's v2 stores it as it is.
_ZERO_OFFSET = {"gptq": 1, "gptq_v2": 0}


class GptqMethod(QuantizationMethod):
    def __init__(self, scheme: Int4Scheme) -> None:
        self.scheme = scheme

    @classmethod
    def from_config(cls, checkpoint_config: Mapping[str, Any]) -> GptqMethod:
        cfg = dict(checkpoint_config)
        if cfg.get("quant_method") != NAME:
            raise ValueError("--quantization gptq needs a GPTQ checkpoint (sgl does not quantize to int4 at load)")
        require_4bit(NAME, cfg)
        fmt = cfg.get("checkpoint_format", "gptq")
        if fmt not in _ZERO_OFFSET:
            raise ValueError(f"gptq: checkpoint_format {fmt!r} is not supported; supported: gptq, gptq_v2")
        refuse_ignored_linears(NAME, cfg.get("modules_to_not_convert"))
        return cls(Int4Scheme("gptq", group_size(NAME, cfg), bool(cfg.get("desc_act", False)), _ZERO_OFFSET[fmt]))

    def linear_method(self) -> LinearMethod:
        return Int4LinearMethod(self.scheme)

    def kernel_linear_method(self, capabilities: Capabilities) -> LinearMethod | None:
        return fast_int4_linear_method(self.scheme, capabilities)

    def moe_method(self) -> MoEMethod | None:
        return Int4MoEMethod(self.scheme)

    def kernel_moe_method(self, capabilities: Capabilities) -> MoEMethod | None:
        return fast_int4_moe_method(self.scheme, capabilities)
