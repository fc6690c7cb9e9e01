"""NVIDIA ModelOpt checkpoints: NVFP4 (``quant_algo: "NVFP4"``) and FP8 (``quant_algo: "FP8"``).

NVFP4 per linear layer: ``weight`` uint8 [out, in/2] (two e2m1 values a byte, the even input in the low nibble),
``weight_scale`` e4m3 [out, in/16], ``weight_scale_2`` a float32 scalar (the global scale; one per merged slice)
and ``input_scale`` (the activations' global scale, read by a W4A4 kernel). The reference dequantizes the weights
and multiplies in float (activations unquantized); no FP4 tensor-core path is shipped or verified here.
ModelOpt FP8 is per-tensor weights with static input scales: the FP8 reference and kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from sgl.core.model.linear_method import LinearMethod, ShardLayout
from sgl.core.quant.base import QuantizationMethod
from sgl.plugins.quant.checks import refuse_ignored_linears, require_float8
from sgl.plugins.quant.fp8_linear import Fp8LinearMethod, Fp8Scheme
from sgl.plugins.quant.kernel_methods import fast_fp8_linear_method
from sgl.plugins.quant.nvfp4_format import GROUP, dummy_fill, unpack_e2m1
from sgl.plugins.quant.params import DUMMY_SCALE, dummy_bits, expand_per_shard, quant_param, replace_param

if TYPE_CHECKING:
    from sgl.core.model.moe_method import MoEMethod
    from sgl.core.platform import Capabilities, Platform

RUNS_ON = "its torch reference runs on the cpu platform and on CUDA GPUs"


class NvFp4LinearMethod(LinearMethod):
    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, bias: bool, dtype: torch.dtype
    ) -> None:
        if in_features % GROUP:
            raise ValueError(f"nvfp4: input features {in_features} are not whole groups of {GROUP}")
        shards = len(layer.output_partition_sizes)
        layer.register_parameter(
            "bias", nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        )
        quant_param(layer, "weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8),
                    ShardLayout(0, 1, 1, 2), dummy_bits)
        quant_param(layer, "weight_scale", torch.empty(out_features, in_features // GROUP, dtype=torch.float8_e4m3fn),
                    ShardLayout(0, 1, 1, GROUP), dummy_fill(1.0, torch.float8_e4m3fn))
        per_shard = ShardLayout(None, None, per_shard=True)
        quant_param(layer, "weight_scale_2", torch.empty(shards, dtype=torch.float32), per_shard,
                    dummy_fill(DUMMY_SCALE / 3, torch.float32))
        quant_param(layer, "input_scale", torch.empty(shards, dtype=torch.float32), per_shard,
                    dummy_fill(1.0, torch.float32))

    @torch.no_grad()
    def process_weights_after_loading(self, layer: nn.Module) -> None:
        # NOTE: each merged slice keeps its own global scale, spread over its rows
        scale_2 = cast(torch.Tensor, layer.weight_scale_2)
        replace_param(layer, "weight_scale_2", expand_per_shard(scale_2, layer.output_partition_sizes))

    def dequantized_weight(self, layer: nn.Module) -> torch.Tensor:
        values = unpack_e2m1(cast(torch.Tensor, layer.weight))
        scales = cast(torch.Tensor, layer.weight_scale).float().repeat_interleave(GROUP, 1)
        return values * scales * cast(torch.Tensor, layer.weight_scale_2)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        out = F.linear(x.float(), self.dequantized_weight(layer)).to(x.dtype)
        return out + bias if bias is not None else out


def _modelopt_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The quantization section: config.json's quantization_config, flat or as hf_quant_config.json nests it."""
    nested = cfg.get("quantization")
    return dict(nested) if isinstance(nested, Mapping) else dict(cfg)


class ModelOptMethod(QuantizationMethod):
    """``quant_method: "modelopt"`` (and SGLang's ``--quantization modelopt_fp4``): NVFP4 or FP8 by ``quant_algo``."""

    def __init__(self, algo: str) -> None:
        self.algo = algo

    @classmethod
    def from_config(cls, checkpoint_config: Mapping[str, Any]) -> ModelOptMethod:
        if not checkpoint_config:
            raise ValueError("modelopt: needs a ModelOpt checkpoint (sgl does not quantize to FP4 at load)")
        cfg = _modelopt_config(checkpoint_config)
        algo = str(cfg.get("quant_algo", "")).upper()
        if algo not in ("NVFP4", "FP8"):
            raise ValueError(f"modelopt: quant_algo {cfg.get('quant_algo')!r} is not supported; supported: NVFP4, FP8")
        if algo == "NVFP4" and cfg.get("group_size", GROUP) != GROUP:
            raise ValueError(f"modelopt NVFP4: group_size must be {GROUP}; got {cfg.get('group_size')!r}")
        refuse_ignored_linears("modelopt", cfg.get("exclude_modules") or cfg.get("ignore"))
        return cls(algo)

    def linear_method(self) -> LinearMethod:
        if self.algo == "NVFP4":
            return NvFp4LinearMethod()
        return Fp8LinearMethod(Fp8Scheme("tensor", "static"))

    def moe_method(self) -> MoEMethod | None:
        from sgl.plugins.quant.fp8_moe import Fp8MoEMethod
        from sgl.plugins.quant.nvfp4_moe import NvFp4MoEMethod

        return NvFp4MoEMethod() if self.algo == "NVFP4" else Fp8MoEMethod(Fp8Scheme("tensor", "static"))

    def check_platform(self, platform: Platform) -> None:
        require_float8(f"modelopt ({self.algo})", platform, RUNS_ON)

    def kernel_linear_method(self, capabilities: Capabilities) -> LinearMethod | None:
        if self.algo == "FP8":
            return fast_fp8_linear_method(Fp8Scheme("tensor", "static"), capabilities)
        return None  # NOTE: no FP4 tensor-core kernel yet: the reference runs (and the platform says so once)

    def kernel_moe_method(self, capabilities: Capabilities) -> MoEMethod | None:
        if self.algo == "FP8":
            from sgl.plugins.quant.kernel_methods import fast_fp8_moe_method

            return fast_fp8_moe_method(Fp8Scheme("tensor", "static"), capabilities)
        return None
