"""The AWQ/GPTQ MoEMethod for Triton platforms: sgl.kernels.fused_moe_int4 over the reference method's tensors as
loaded, computing what the reference computes (tested against it under TRITON_INTERPRET)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from sgl.kernels.fused_moe_int4 import Int4Experts, fused_moe_int4
from sgl.plugins.quant.int4_moe import Int4MoEMethod

if TYPE_CHECKING:
    from sgl.core.ops.table import Ops


class TritonInt4MoEMethod(Int4MoEMethod):
    def experts(self, layer: nn.Module, group: str) -> Int4Experts:
        qweight, qzeros, scales, g_idx = self.tensors(layer, group)
        return Int4Experts(qweight, qzeros, scales, g_idx, int(cast(dict[str, int], layer.int4_groups)[group]))

    def apply(
        self, layer: nn.Module, ops: Ops, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        activation: str,
    ) -> torch.Tensor:
        s = self.scheme
        return fused_moe_int4(x, self.experts(layer, "w13"), self.experts(layer, "w2"), topk_weights, topk_ids,
                              s.fmt == "awq", s.zero_offset, activation)
