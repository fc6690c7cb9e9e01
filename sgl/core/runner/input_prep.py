"""Turns a ScheduleBatch into a ForwardBatch of device tensors."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch

from sgl.core.runner.forward_batch import ForwardBatch

if TYPE_CHECKING:
    from sgl.core.runner.model_runner import ModelRunner
    from sgl.core.scheduler.batch import ScheduleBatch


def _t(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64).to(device, non_blocking=True)


def build_forward_batch(
    batch: ScheduleBatch, runner: ModelRunner, input_ids: torch.Tensor | None = None
) -> ForwardBatch:
    """``input_ids`` (already on the device) overrides the batch's own, for a step chained onto an unresolved one."""
    device = runner.device
    seq_lens = batch.seq_lens
    fb = ForwardBatch(
        forward_mode=batch.mode,
        batch_size=len(batch),
        input_ids=input_ids if input_ids is not None else _t(batch.input_ids(), device),
        positions=_t(batch.positions(), device),
        req_pool_indices=_t([r.req_pool_idx for r in batch.reqs], device),  # type: ignore[misc]
        seq_lens=_t(seq_lens, device),
        out_cache_loc=batch.out_cache_loc.to(device, non_blocking=True),
        seq_lens_cpu=seq_lens,
        req_to_token_pool=runner.req_to_token_pool,
        kv_pool=runner.kv_pool,
        attn_backend=runner.attn_backend,
    )
    if batch.mode.is_extend:
        starts = list(itertools.accumulate([0] + batch.extend_lens[:-1]))
        fb.extend_prefix_lens = _t(batch.prefix_lens, device)
        fb.extend_seq_lens = _t(batch.extend_lens, device)
        fb.extend_start_loc = _t(starts, device)
        fb.extend_prefix_lens_cpu = list(batch.prefix_lens)
        fb.extend_seq_lens_cpu = list(batch.extend_lens)
    return fb
