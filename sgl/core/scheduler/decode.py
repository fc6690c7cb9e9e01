"""Decode batches: one new KV slot per running request, and retraction when the pool cannot give them."""

from __future__ import annotations

import logging

import torch

from sgl.core.ipc import FinishReason
from sgl.core.runner.forward_batch import ForwardMode
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.req import Req
from sgl.core.scheduler.state import SchedulerState

logger = logging.getLogger(__name__)


def decode_batch(state: SchedulerState, reqs: list[Req], ahead: int) -> ScheduleBatch | None:
    """Allocates one slot per request and builds the DECODE batch, or returns None when the pool is full.

    ``ahead`` is 1 when the batch chains onto an unresolved step: each request's KV then already reaches one
    token further than ``kv_len`` says.
    """
    starts = [r.kv_len + ahead for r in reqs]
    last = [state.last_loc(r, n) for r, n in zip(reqs, starts)]
    state.make_room(len(reqs) * state.page_size)
    got = state.allocator.alloc_decode([n + 1 for n in starts], last)
    if got is None:
        return None
    # NOTE: the host mirror here; build_forward_batch writes the device table without a sync.
    rows = torch.tensor([r.req_pool_idx for r in reqs], dtype=torch.int64)
    state.req_pool.write_host(rows, torch.tensor(starts, dtype=torch.int64), got)
    for r, slot in zip(reqs, got.tolist()):
        r.last_slot = slot
    return ScheduleBatch(ForwardMode.DECODE, list(reqs), starts, [1] * len(reqs), got)


def schedule_decode(state: SchedulerState) -> ScheduleBatch | None:
    """The running batch's next decode step, retracting the youngest requests until it fits."""
    while state.running:
        batch = decode_batch(state, state.running, ahead=0)
        if batch is not None:
            return batch
        retract_one(state)
    return None


def retract_one(state: SchedulerState) -> None:
    """Sends the youngest running request back to the waiting queue; its KV stays evictable in the cache."""
    victim = max(state.running, key=lambda r: r.arrival)
    state.running.remove(victim)
    if not state.running and not state.waiting and state.chunked is None:
        # NOTE: even alone it cannot get one more slot: the pool is smaller than this request needs.
        victim.finished_reason = FinishReason(
            "abort", message=f"the KV pool ({state.allocator.size} tokens) cannot hold this request", status_code=400
        )
        state.finish(victim)
        return
    state.requeue(victim)
    state.counters.retractions += 1
    state.token_ratio.reset()
    logger.info("KV pool full: retracted %s (%d tokens) for recomputation", victim.rid, victim.seq_len)
