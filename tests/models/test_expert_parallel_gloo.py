"""Expert parallel over real torch.distributed (gloo, two processes): the all-to-all dispatch and combine give the
single-rank MoE's output, with uneven routing (some ranks receive no tokens) and fewer tokens than ranks."""

from __future__ import annotations

import functools
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sgl.core.distributed.communicator import Communicator
from sgl.core.model.expert_parallel import ExpertPlacement, expert_parallel_moe
from sgl.core.ops.moe import fused_moe
from sgl.core.ops.moe_routing import TopKOutput

EXPERTS, HIDDEN, INTER, TOP_K = 8, 16, 24, 2


def _cases() -> list[tuple[torch.Tensor, TopKOutput]]:
    g = torch.Generator().manual_seed(3)
    cases = []
    for tokens, only_low_experts in ((13, False), (1, False), (6, True)):
        x = torch.randn(tokens, HIDDEN, generator=g)
        high = EXPERTS // 2 if only_low_experts else EXPERTS  # every pair on rank 0's experts: rank 1 gets nothing
        ids = torch.stack([torch.randperm(high, generator=g)[:TOP_K] for _ in range(tokens)])
        weights = torch.rand(tokens, TOP_K, generator=g)
        cases.append((x, TopKOutput(weights=weights, ids=ids)))
    return cases


def _weights() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=g) * 0.2, torch.randn(EXPERTS, HIDDEN, INTER, generator=g) * 0.2


def _experts(w13: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, weights: torch.Tensor,
             ids: torch.Tensor) -> torch.Tensor:
    return fused_moe(x, w13, w2, weights, ids)


def _rank(rank: int, size: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        place = ExpertPlacement(EXPERTS, rank, size)
        w13, w2 = _weights()
        local = slice(place.first, place.first + place.local)
        results[rank] = [
            expert_parallel_moe(x, topk, place, Communicator(),
                                functools.partial(_experts, w13[local], w2[local]))
            for x, topk in _cases()
        ]
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_expert_parallel_over_gloo_equals_the_single_rank_moe() -> None:
    w13, w2 = _weights()
    expected = [fused_moe(x, w13, w2, topk.weights, topk.ids) for x, topk in _cases()]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank, args=(2, _free_port(), results), nprocs=2, start_method="spawn", join=True)
        got = dict(results)
    for rank in range(2):
        for want, out in zip(expected, got[rank]):
            torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
