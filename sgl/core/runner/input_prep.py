"""Turns a ScheduleBatch into a ForwardBatch of device tensors."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch

from sgl.core.runner.forward_batch import ForwardBatch
from sgl.core.transfer import rows_to_device, to_device

if TYPE_CHECKING:
    from sgl.core.runner.model_runner import ModelRunner
    from sgl.core.scheduler.batch import ScheduleBatch


def build_forward_batch(
    batch: ScheduleBatch, runner: ModelRunner, input_ids: torch.Tensor | None = None
) -> ForwardBatch:
    """``input_ids`` (already on the device) overrides the batch's own, for a step chained onto an unresolved one.

    NOTE: a DECODE batch travels in one pinned transfer, and its new slots are written into req_to_token here, on
    the device, so preparing a step never waits for the step before it.
    """
    device = runner.device
    pinned = bool(runner.platform.capabilities.pinned_memory)
    seq_lens = batch.seq_lens
    pool_idx = [int(r.req_pool_idx) for r in batch.reqs]  # type: ignore[arg-type]  # scheduled: always set
    if batch.mode.is_decode:
        ids = batch.input_ids() if input_ids is None else [0] * len(batch)
        packed = rows_to_device(
            [ids, batch.positions(), pool_idx, seq_lens, batch.out_cache_loc.tolist()], torch.int64, device, pinned
        )
        table = runner.req_to_token_pool.req_to_token
        table[packed[2], packed[1]] = packed[4].to(table.dtype)
        return ForwardBatch(
            forward_mode=batch.mode, batch_size=len(batch),
            input_ids=input_ids if input_ids is not None else packed[0], positions=packed[1],
            req_pool_indices=packed[2], seq_lens=packed[3], out_cache_loc=packed[4], seq_lens_cpu=seq_lens,
            req_to_token_pool=runner.req_to_token_pool, kv_pool=runner.kv_pool, attn_backend=runner.attn_backend,
        )
    starts = list(itertools.accumulate([0] + batch.extend_lens[:-1]))
    per_req = rows_to_device([pool_idx, seq_lens, batch.prefix_lens, batch.extend_lens, starts], torch.int64,
                             device, pinned)
    per_tok = rows_to_device([batch.input_ids(), batch.positions()], torch.int64, device, pinned)
    return ForwardBatch(
        forward_mode=batch.mode, batch_size=len(batch),
        input_ids=input_ids if input_ids is not None else per_tok[0], positions=per_tok[1],
        req_pool_indices=per_req[0], seq_lens=per_req[1],
        out_cache_loc=to_device(batch.out_cache_loc, device, pinned), seq_lens_cpu=seq_lens,
        req_to_token_pool=runner.req_to_token_pool, kv_pool=runner.kv_pool, attn_backend=runner.attn_backend,
        extend_prefix_lens=per_req[2], extend_seq_lens=per_req[3], extend_start_loc=per_req[4],
        extend_prefix_lens_cpu=list(batch.prefix_lens), extend_seq_lens_cpu=list(batch.extend_lens),
    )
