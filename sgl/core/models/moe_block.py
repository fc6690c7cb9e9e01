"""The sparse MoE block the MoE families share (router -> routed experts [+ shared experts]) and their loading."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.moe import ExpertParam, ExpertWeights, FusedMoE, MoEGate
from sgl.core.model.weights import StackedParam, load_stacked_weights
from sgl.core.models.llama import LlamaMLP
from sgl.core.ops.moe_routing import RoutingConfig


class SparseMoeBlock(nn.Module):
    """x -> sum of its top-k experts' outputs (weighted by the router), plus the always-on shared experts if any.

    NOTE: ``gate``, ``experts`` and ``shared_experts`` are the checkpoints' names, so tensors load without renaming.
    """

    def __init__(
        self, config: ModelConfig, ctx: ModelContext, routing: RoutingConfig, moe_intermediate_size: int,
        shared_intermediate_size: int = 0, correction_bias: bool = False, fp32_router: bool = False,
    ) -> None:
        super().__init__()
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r} for MoE experts; supported: 'silu'")
        self.gate = MoEGate(config.hidden_size, routing, ctx, correction_bias, fp32_router)
        self.experts = FusedMoE(routing.num_experts, config.hidden_size, moe_intermediate_size, ctx)
        self.shared_experts = (
            LlamaMLP(config, ctx, intermediate_size=shared_intermediate_size) if shared_intermediate_size else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts(x, self.gate(x))
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out


def load_moe_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    stacked: Sequence[StackedParam],
    expert_params: Sequence[ExpertParam],
    skip: Iterable[str] = (),
) -> set[str]:
    """load_stacked_weights, with the per-expert tensors taken out first and loaded into the fused experts."""
    experts = ExpertWeights(model, expert_params)
    rest = ((name, t) for name, t in weights if not experts.take(name, t))
    loaded = load_stacked_weights(model, rest, stacked, skip)
    return loaded | experts.finish()
