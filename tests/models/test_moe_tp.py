"""Tensor-parallel ranks of the MoE and MLA models reproduce the single-rank logits: experts split on their
intermediate dimension, latent attention's heads split, the latent cache replicated on every rank."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from sgl.core.distributed.communicator import ParallelState
from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.model.moe import FusedMoE
from sgl.core.platform import Platform
from tests.core.test_loader import _ThreadComm, _ThreadGroup
from tests.core.tiny_models import build_forward_batch
from tests.models.paged import make_model_paged_kv
from tests.models.tiny_moe import MOE_ARCHS, make_tiny_moe_model

pytest.importorskip("transformers")


@pytest.mark.parametrize("ep", [1, 2], ids=["tp-experts", "expert-parallel"])
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_two_tensor_parallel_ranks_reproduce_single_rank_logits(arch: str, ep: int, tmp_path: Path) -> None:
    """ep=2: each rank holds half the experts whole and tokens travel to them by all-to-all."""
    path = make_tiny_moe_model(arch, tmp_path, seed=9)
    prompts = [[5, 9, 33, 7, 100, 2], [8, 8, 1]]

    def run(parallel: ParallelState) -> torch.Tensor:
        model, config = load_model(path, ModelContext.from_platform(Platform(), torch.float32, parallel))
        experts = [m for m in model.modules() if isinstance(m, FusedMoE)]
        assert experts and all(m.w13_weight.shape[0] == m.num_experts // parallel.ep_size for m in experts)
        paged = make_model_paged_kv(model, config)
        with torch.no_grad():
            fb = build_forward_batch(paged, [0, 1], [0, 0], prompts)
            first = model.compute_logits(model(fb.input_ids, fb.positions, fb))
            fb = build_forward_batch(paged, [0, 1], [6, 3], [[11], [12]])  # one decode step over the cache
            return torch.cat([first, model.compute_logits(model(fb.input_ids, fb.positions, fb))])

    expected = run(ParallelState())
    tp = 2
    group = _ThreadGroup(tp)
    results: list[Any] = [None] * tp
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            results[rank] = run(ParallelState(rank, tp, _ThreadComm(rank, group), ep_size=ep))
        except BaseException as exc:  # noqa: BLE001 (surfaced below; a dead rank would otherwise hang the barrier)
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(tp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for r in range(tp):
        torch.testing.assert_close(results[r], expected, atol=1e-5, rtol=0)
