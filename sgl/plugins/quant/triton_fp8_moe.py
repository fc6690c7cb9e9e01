"""The FP8 MoEMethod for Triton platforms: the fused grouped-GEMM MoE (sgl.kernels.fused_moe.fused_moe_fp8) over the
reference method's layout, computing what the reference computes (tested against it under TRITON_INTERPRET)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from sgl.kernels.fused_moe import fused_moe_fp8
from sgl.plugins.quant import fp8_math as fm
from sgl.plugins.quant.fp8_linear import Fp8Scheme
from sgl.plugins.quant.fp8_moe import Fp8MoEMethod

if TYPE_CHECKING:
    from sgl.core.ops.table import Ops


class TritonFp8MoEMethod(Fp8MoEMethod):
    """NOTE: ``fp16_dot`` widens both fp8 operands to fp16 (exact for e4m3) on GPUs without fp8 tensor cores."""

    def __init__(self, scheme: Fp8Scheme, fp8_dtype: torch.dtype = fm.FP8, fp16_dot: bool = False) -> None:
        super().__init__(scheme, fp8_dtype)
        self.fp16_dot = fp16_dot

    def apply(
        self, layer: nn.Module, ops: Ops, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        activation: str,
    ) -> torch.Tensor:
        def get(name: str) -> torch.Tensor:
            return cast(torch.Tensor, getattr(layer, name))

        statics = (get("w13_input_scale"), get("w2_input_scale")) if self.activation == "static" else None
        return fused_moe_fp8(x, get("w13_weight"), get(self.scale_name("w13")), get("w2_weight"),
                             get(self.scale_name("w2")), topk_weights, topk_ids, self.block, activation,
                             self.fp16_dot, statics, weight_only=self.activation == "none")
