"""Expert routing: router logits -> (weights, expert ids) per token, the way each MoE family's config says.

Families differ only in named ways: the score function (softmax for Mixtral / Qwen-MoE / DeepSeek-V2, sigmoid for
DeepSeek-V3), whether the chosen weights are renormalised, DeepSeek's grouped top-k (pick the best groups first, then
experts within them; V3 ranks by score + a correction bias but weighs by the bare score) and a final scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch


class TopKOutput(NamedTuple):
    weights: torch.Tensor  # [T, top_k] fp32: how much each chosen expert's output counts
    ids: torch.Tensor  # [T, top_k] int64: which experts, in [0, num_experts)


ScoreFn = Callable[[torch.Tensor], torch.Tensor]

SCORE_FUNCTIONS: dict[str, ScoreFn] = {
    "softmax": lambda logits: logits.softmax(dim=-1),
    "sigmoid": torch.sigmoid,
}

# How a group of experts is ranked in grouped top-k: its best score (DeepSeek-V2) or its best two summed (V3).
GROUP_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "max": lambda g: g.max(dim=-1).values,
    "top2_sum": lambda g: g.topk(2, dim=-1).values.sum(dim=-1),
}


@dataclass(frozen=True)
class RoutingConfig:
    """One MoE layer's routing rule; ``num_groups`` > 1 turns on grouped top-k."""

    top_k: int
    num_experts: int
    scoring: str = "softmax"
    renormalize: bool = False
    num_groups: int = 1
    topk_groups: int = 1
    group_score: str = "max"
    scale: float = 1.0  # DeepSeek's routed_scaling_factor, folded into the weights

    def __post_init__(self) -> None:
        if self.scoring not in SCORE_FUNCTIONS:
            raise ValueError(f"unknown expert scoring {self.scoring!r}; known: {', '.join(SCORE_FUNCTIONS)}")
        if self.group_score not in GROUP_SCORES:
            raise ValueError(f"unknown group score {self.group_score!r}; known: {', '.join(GROUP_SCORES)}")
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"top_k {self.top_k} must be in [1, num_experts={self.num_experts}]")
        if self.num_experts % self.num_groups or not 0 < self.topk_groups <= self.num_groups:
            raise ValueError(
                f"{self.num_experts} experts in {self.num_groups} groups, keeping {self.topk_groups}: "
                "groups must divide the experts and at least one must be kept"
            )


def select_experts(
    router_logits: torch.Tensor, cfg: RoutingConfig, correction_bias: torch.Tensor | None = None
) -> TopKOutput:
    """router_logits [T, E] -> TopKOutput; scores are computed in fp32 whatever the logits' dtype."""
    scores = SCORE_FUNCTIONS[cfg.scoring](router_logits.float())
    choice = scores if correction_bias is None else scores + correction_bias.float()
    if cfg.num_groups > 1:
        t = choice.shape[0]
        groups = choice.view(t, cfg.num_groups, -1)
        best = GROUP_SCORES[cfg.group_score](groups).topk(cfg.topk_groups, dim=-1).indices
        keep = torch.zeros(t, cfg.num_groups, dtype=torch.bool, device=choice.device)
        keep.scatter_(1, best, True)
        # NOTE: experts of dropped groups are masked to -inf (never chosen), not 0: sigmoid scores plus a bias can
        # be negative, and 0 would then win over them.
        choice = choice.masked_fill(~keep.unsqueeze(-1).expand_as(groups).reshape(t, -1), float("-inf"))
    ids = choice.topk(cfg.top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if cfg.renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    if cfg.scale != 1.0:
        weights = weights * cfg.scale
    return TopKOutput(weights, ids)
