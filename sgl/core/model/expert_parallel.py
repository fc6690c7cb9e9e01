"""Expert parallel: each rank of the TP group holds a contiguous ``1/ep`` of a layer's experts, whole.

Under TP every rank holds the same hidden states, so each rank takes its own ``1/ep`` of the tokens, sends every
(token, expert) pair to the rank that holds the expert (an all-to-all), runs its local experts over what it received,
sends the results back (a second all-to-all), weights and sums them per token, and the ranks gather the tokens
again. Each expert's weights are read by one rank only, which is what makes EP pay for many experts.

NOTE: the all-to-all sizes depend on the routing, so a decode step with EP is not captured in a graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from sgl.core.distributed.communicator import Communicator
from sgl.core.ops.moe_routing import TopKOutput


class LocalExperts(Protocol):
    """This rank's experts: ``x [T, H]``, weights and local ids ``[T, k]`` -> ``[T, H]`` (a MoE layer's method)."""

    def __call__(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ExpertPlacement:
    """Which experts live on this rank: ``[first, first + local)`` of ``num_experts``."""

    num_experts: int
    ep_rank: int = 0
    ep_size: int = 1

    def __post_init__(self) -> None:
        if self.num_experts % self.ep_size:
            raise ValueError(f"{self.num_experts} experts do not split evenly over --ep-size {self.ep_size}")

    @property
    def local(self) -> int:
        return self.num_experts // self.ep_size

    @property
    def first(self) -> int:
        return self.ep_rank * self.local

    def holds(self, expert: int) -> bool:
        return self.first <= expert < self.first + self.local


def expert_parallel_moe(
    x: torch.Tensor, topk: TopKOutput, placement: ExpertPlacement, comm: Communicator, experts: LocalExperts,
) -> torch.Tensor:
    """x [T, H] (the same on every rank) -> [T, H], the routed experts' weighted sum, the same on every rank."""
    ep, rank = placement.ep_size, placement.ep_rank
    total = x.shape[0]
    if total == 0:
        return x.new_zeros(0, x.shape[1])
    per_rank = -(-total // ep)
    start, stop = min(rank * per_rank, total), min((rank + 1) * per_rank, total)
    mine, ids, weights = x[start:stop], topk.ids[start:stop], topk.weights[start:stop]

    # one row per (token, chosen expert), ordered by the rank that holds the expert
    top_k = ids.shape[1]
    token_of = torch.arange(stop - start, device=x.device).repeat_interleave(top_k)
    flat_ids = ids.reshape(-1).long()
    owner = torch.div(flat_ids, placement.local, rounding_mode="floor")
    order = torch.argsort(owner, stable=True)
    send_counts = torch.bincount(owner, minlength=ep).tolist()
    rows, _ = comm.all_to_all(mine[token_of[order]], send_counts)
    local_ids, recv_counts = comm.all_to_all((flat_ids - owner * placement.local)[order], send_counts)

    ones = torch.ones(rows.shape[0], 1, dtype=torch.float32, device=x.device)
    outputs = experts(rows, ones, local_ids[:, None])
    back, _ = comm.all_to_all(outputs, recv_counts)

    combined = torch.zeros(per_rank, x.shape[1], dtype=torch.float32, device=x.device)
    combined.index_add_(0, token_of[order], back.float() * weights.reshape(-1)[order, None].float())
    return comm.all_gather(combined.to(x.dtype), dim=0)[:total]
