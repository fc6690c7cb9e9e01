"""NVFP4 experts (ModelOpt ``quant_algo: NVFP4``): the linear layout stacked over experts, computed by the reference.

Each expert's ``gate_proj``/``up_proj``/``down_proj`` carry ``weight`` uint8 ``[out, in/2]`` (two e2m1 values a
byte), ``weight_scale`` e4m3 ``[out, in/16]``, a global ``weight_scale_2`` and an ``input_scale``; they load into
``w13_weight [E, 2I, H/2]``, ``w13_weight_scale [E, 2I, H/16]``, ``w2_weight [E, H, I/2]``, ``w2_weight_scale
[E, H, I/16]``, and per slice ``w13_weight_scale_2 [E, 2]`` (gate's, up's) and ``w2_weight_scale_2 [E, 1]``, spread
over their rows after loading as the merged linear spreads them. ``input_scale`` is loaded and checked, not used:
as in the dense layers the reference keeps activations unquantized (W4A16 arithmetic), and there is no FP4
tensor-core (Blackwell) kernel here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from sgl.core.model.linear_method import ShardLayout
from sgl.core.model.moe_method import MoEMethod
from sgl.core.ops import moe as reference_moe
from sgl.plugins.quant.nvfp4_format import GROUP, dummy_fill, unpack_e2m1
from sgl.plugins.quant.params import DUMMY_SCALE, dummy_bits, quant_param, replace_param

if TYPE_CHECKING:
    from sgl.core.ops.table import Ops

GROUPS = ("w13", "w2")


class NvFp4MoEMethod(MoEMethod):
    def create_weights(
        self, layer: nn.Module, num_experts: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype
    ) -> None:
        e, h, i = num_experts, hidden_size, intermediate_size
        if h % GROUP or i % GROUP:
            raise ValueError(f"nvfp4 experts: the hidden size ({h}) or this rank's intermediate size ({i}) is not a "
                             f"whole number of {GROUP}-feature groups; use fewer TP ranks or --ep-size")
        per_shard = ShardLayout(None, None, per_shard=True)
        for group, rows, cols, slices in (("w13", 2 * i, h, 2), ("w2", h, i, 1)):
            quant_param(layer, f"{group}_weight", torch.empty(e, rows, cols // 2, dtype=torch.uint8),
                        ShardLayout(0, 1, 1, 2), dummy_bits)
            quant_param(layer, f"{group}_weight_scale", torch.empty(e, rows, cols // GROUP,
                                                                    dtype=torch.float8_e4m3fn),
                        ShardLayout(0, 1, 1, GROUP), dummy_fill(1.0, torch.float8_e4m3fn))
            quant_param(layer, f"{group}_weight_scale_2", torch.empty(e, slices, dtype=torch.float32), per_shard,
                        dummy_fill(DUMMY_SCALE / 3, torch.float32))
            quant_param(layer, f"{group}_input_scale", torch.empty(e, slices, dtype=torch.float32), per_shard,
                        dummy_fill(1.0, torch.float32))

    @torch.no_grad()
    def process_weights_after_loading(self, layer: nn.Module) -> None:
        for group in GROUPS:
            rows = cast(torch.Tensor, getattr(layer, f"{group}_weight")).shape[1]
            scale_2 = cast(torch.Tensor, getattr(layer, f"{group}_weight_scale_2")).float()
            replace_param(layer, f"{group}_weight_scale_2",
                          scale_2.repeat_interleave(rows // scale_2.shape[1], dim=1).unsqueeze(-1))

    def dequantized(self, layer: nn.Module, group: str, experts: torch.Tensor) -> torch.Tensor:
        """Float32 ``[len(experts), rows, cols]``: e2m1 values times their group's e4m3 scale and their slice's
        global scale."""
        def get(name: str) -> torch.Tensor:
            return cast(torch.Tensor, getattr(layer, f"{group}_{name}"))[experts]

        scales = get("weight_scale").float().repeat_interleave(GROUP, -1)
        return unpack_e2m1(get("weight")) * scales * get("weight_scale_2")

    def apply(
        self, layer: nn.Module, ops: Ops, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        activation: str,
    ) -> torch.Tensor:
        # NOTE: only the experts hit are dequantized
        hit, local_ids = reference_moe.experts_hit(topk_ids, cast(torch.Tensor, layer.w13_weight).shape[0])
        out = reference_moe.fused_moe(x.float(), self.dequantized(layer, "w13", hit),
                                      self.dequantized(layer, "w2", hit), topk_weights, local_ids, activation,
                                      hidden_dtype=x.dtype)
        return out.to(x.dtype)
