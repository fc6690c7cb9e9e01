"""The expert contract of every MoE layer: a MoEMethod creates the layer's fused expert weights and applies them.

The MoE twin of ``linear_method.py`` (a leaf module, torch only): a quantization method that lays out expert weights
its own way (fp8 values with block scales) supplies its MoEMethod; without one, experts are dense and run through the
platform's ``fused_moe`` op. The layer (``sgl.core.model.moe.FusedMoE``) owns tensor- and expert-parallel sharding
and loading; the method only says which tensors exist and how each maps onto one expert's ``[out, in]`` matrix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from sgl.core.ops.table import Ops


class MoEMethod(ABC):
    """How a MoE layer's experts are created and applied.

    NOTE: ``create_weights`` registers ``w13_<suffix>`` and ``w2_<suffix>`` parameters of shape ``[E, ...]`` (E this
    rank's experts), at least ``w13_weight [E, 2I, H]`` and ``w2_weight [E, H, I]``. A checkpoint tensor
    ``experts.{e}.gate_proj.<suffix>`` loads into ``w13_<suffix>``; each parameter's ``shard_layout`` (a
    ``ShardLayout`` over one expert's ``[out, in]`` matrix) tells the layer's loader how to slice it, as it does for
    a linear layer's. A parameter with ``all_experts = True`` has one entry per expert of the whole layer on every
    rank, expert-parallel or not (what the layer's experts share must not depend on which experts a rank holds).
    """

    @abstractmethod
    def create_weights(
        self, layer: nn.Module, num_experts: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype
    ) -> None:
        """Registers this rank's expert parameters (``num_experts`` held here, ``intermediate_size`` this rank's)."""

    @abstractmethod
    def apply(
        self, layer: nn.Module, ops: Ops, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        activation: str,
    ) -> torch.Tensor:
        """``x [T, H] -> [T, H]``: the weighted sum of each token's experts; ids outside ``[0, E)`` add nothing (the
        experts of other expert-parallel ranks)."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Called once per layer after every expert arrived: online quantization, re-encoding, repacking."""


class UnquantizedMoEMethod(MoEMethod):
    """Dense experts in the model's dtype, computed by the platform's ``fused_moe`` op (its Triton kernel on Triton
    platforms, the torch reference elsewhere)."""

    def create_weights(
        self, layer: nn.Module, num_experts: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype
    ) -> None:
        i = intermediate_size
        layer.register_parameter(
            "w13_weight", nn.Parameter(torch.empty(num_experts, 2 * i, hidden_size, dtype=dtype), requires_grad=False)
        )
        layer.register_parameter(
            "w2_weight", nn.Parameter(torch.empty(num_experts, hidden_size, i, dtype=dtype), requires_grad=False)
        )

    def apply(
        self, layer: nn.Module, ops: Ops, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        activation: str,
    ) -> torch.Tensor:
        w13, w2 = cast(torch.Tensor, layer.w13_weight), cast(torch.Tensor, layer.w2_weight)
        return ops.fused_moe(x, w13, w2, topk_weights, topk_ids, activation)
