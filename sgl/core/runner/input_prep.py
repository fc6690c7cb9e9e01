"""Turns a ScheduleBatch into a ForwardBatch of device tensors."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch

from sgl.core.runner.forward_batch import ForwardBatch
from sgl.core.transfer import host_rows, lists_to_device, rows_to_device, to_device

if TYPE_CHECKING:
    from sgl.core.runner.model_runner import ModelRunner
    from sgl.core.scheduler.batch import ScheduleBatch

LIST_SLOTS = 512  # an extend batch's slots up to this many travel as a list with its other rows


def build_forward_batch(
    batch: ScheduleBatch, runner: ModelRunner, input_ids: torch.Tensor | None = None
) -> ForwardBatch:
    """``input_ids`` (already on the device) overrides the batch's own, for a step chained onto an unresolved one.

    NOTE: a DECODE batch travels in one pinned transfer, and its new slots are written into req_to_token here, on
    the device, so preparing a step never waits for the step before it. So are a TARGET_VERIFY batch's
    (``alloc_verify_slots`` wrote the host mirror only): request i's token j at column ``prefix_lens[i] + j``.
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
    per_req: list[list[int]] = [pool_idx, seq_lens, batch.prefix_lens, batch.extend_lens, starts]
    # NOTE: given input ids (a draft's, already on the device) spare building the batch's own on the host
    tok_rows = [batch.positions()] if input_ids is not None else [batch.positions(), batch.input_ids()]
    # NOTE: a CPU's table is the host mirror, which alloc_verify_slots wrote already
    verify = batch.mode.is_verify and not runner.req_to_token_pool.on_host
    if verify:  # the request table's rows and columns of the new slots (a tree's columns are its node order)
        tok_rows.append([i for i, e in zip(pool_idx, batch.extend_lens) for _ in range(e)])
        tok_rows.append([p + j for p, e in zip(batch.prefix_lens, batch.extend_lens) for j in range(e)])
    loc = batch.out_cache_loc
    # NOTE: the per-request rows, per-token rows and slots in one transfer; a long prefill's slots join as a tensor
    # (a list of thousands of ints costs more to build than the transfer it saves)
    if loc.device.type == "cpu" and loc.numel() <= LIST_SLOTS:
        *rows, loc = lists_to_device([*per_req, *tok_rows, loc.tolist()], torch.int64, device, pinned)
    elif loc.device.type == "cpu":
        host = [host_rows(per_req, torch.int64).reshape(-1), host_rows(tok_rows, torch.int64).reshape(-1)]
        flat = to_device(torch.cat([*host, loc.to(torch.int64)]), device, pinned)
        rows, loc = [*flat[: -loc.numel()].split([len(x) for x in (*per_req, *tok_rows)])], flat[-loc.numel() :]
    else:
        rows = lists_to_device([*per_req, *tok_rows], torch.int64, device, pinned)
    per_tok = rows[len(per_req) :]
    if verify:
        table = runner.req_to_token_pool.req_to_token
        table[per_tok[-2], per_tok[-1]] = loc.to(table.dtype)
    return ForwardBatch(
        forward_mode=batch.mode, batch_size=len(batch),
        input_ids=input_ids if input_ids is not None else per_tok[1], positions=per_tok[0],
        req_pool_indices=rows[0], seq_lens=rows[1], out_cache_loc=loc, seq_lens_cpu=seq_lens,
        req_to_token_pool=runner.req_to_token_pool, kv_pool=runner.kv_pool, attn_backend=runner.attn_backend,
        extend_prefix_lens=rows[2], extend_seq_lens=rows[3], extend_start_loc=rows[4],
        extend_prefix_lens_cpu=list(batch.prefix_lens), extend_seq_lens_cpu=list(batch.extend_lens),
    )


def build_decode_run(
    batch: ScheduleBatch, runner: ModelRunner, input_ids: torch.Tensor | None = None
) -> list[ForwardBatch]:
    """The ``batch.steps`` ForwardBatches of a decode run, from one transfer; step j's input ids are step j-1's
    sampled tokens, which the caller sets (``input_ids`` or the batch's own are step 0's).

    NOTE: every step's slots are written into req_to_token here, on the device, before the first step runs.
    """
    device = runner.device
    pinned = bool(runner.platform.capabilities.pinned_memory)
    k, b = batch.steps, len(batch)
    starts = batch.prefix_lens
    pool_idx = [int(r.req_pool_idx) for r in batch.reqs]  # type: ignore[arg-type]  # scheduled: always set
    ids = batch.input_ids() if input_ids is None else [0] * b
    positions = [[s + j for s in starts] for j in range(k)]
    seq_lens = [[s + j + 1 for s in starts] for j in range(k)]
    loc = batch.out_cache_loc.view(b, k).t().tolist()  # request-major slots -> one row per step
    packed = rows_to_device([ids, pool_idx, *positions, *seq_lens, *loc], torch.int64, device, pinned)
    table = runner.req_to_token_pool.req_to_token
    table[packed[1].repeat(k), packed[2 : 2 + k].reshape(-1)] = packed[2 + 2 * k :].reshape(-1).to(table.dtype)
    return [
        ForwardBatch(
            forward_mode=batch.mode, batch_size=b,
            input_ids=(input_ids if input_ids is not None else packed[0]) if j == 0 else packed[0],
            positions=packed[2 + j], req_pool_indices=packed[1], seq_lens=packed[2 + k + j],
            out_cache_loc=packed[2 + 2 * k + j], seq_lens_cpu=seq_lens[j],
            req_to_token_pool=runner.req_to_token_pool, kv_pool=runner.kv_pool, attn_backend=runner.attn_backend,
        )
        for j in range(k)
    ]
