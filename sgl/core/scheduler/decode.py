"""Decode batches: one new KV slot per running request, and retraction when the pool cannot give them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from sgl.core.ipc import FinishReason
from sgl.core.runner.forward_batch import ForwardMode
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.feature import SchedulerFeature
from sgl.core.scheduler.req import Req
from sgl.core.scheduler.state import SchedulerState
from sgl.core.transfer import host_rows

logger = logging.getLogger(__name__)


def needs_host_tokens(r: Req, features: Sequence[SchedulerFeature]) -> bool:
    """True when sampling r's next token depends on the token before it reaching the host."""
    sp = r.sampling_params
    if (sp.frequency_penalty != 0.0 or sp.presence_penalty != 0.0 or sp.repetition_penalty != 1.0
            or sp.min_new_tokens > len(r.output_ids) + 1):
        return True
    for f in features:  # NOTE: a loop, not any(<generator>): the overlap loop asks this per request per step
        if f.needs_host_tokens(r):
            return True
    return False


class DecodeRuns:
    """How many decode steps the next decode launches back to back (``--num-continuous-decode-steps``).

    A run of K steps feeds each step's sampled tokens to the next on the device and brings all K home at once, so
    the host's work per step (scheduling, bookkeeping, outputs) is paid once per K tokens. Tokens past a request's
    end (a stop token or string found after the run) are dropped and their KV slots freed on release, as overlap
    already does for one step; greedy tokens are the same as K single steps. A run is used only where it cannot
    change a token or delay what the user asked for: no sampling that needs host tokens (penalties, min_tokens,
    grammar), no logprobs, nobody waiting for admission, and never past a request's max_new_tokens.
    """

    def __init__(self, max_steps: int, features: Sequence[SchedulerFeature] = ()) -> None:
        self.max_steps = max(1, max_steps)
        self.features = tuple(features)

    def steps(self, state: SchedulerState, reqs: Sequence[Req], ahead: int) -> int:
        if self.max_steps == 1 or state.waiting or not reqs:
            return 1
        if any(r.return_logprob or needs_host_tokens(r, self.features) for r in reqs):
            return 1
        room = min(r.sampling_params.max_new_tokens - len(r.output_ids) - ahead for r in reqs)
        return max(1, min(self.max_steps, room))


def decode_batch(state: SchedulerState, reqs: list[Req], ahead: int, steps: int = 1) -> ScheduleBatch | None:
    """Allocates ``steps`` slots per request and builds the DECODE batch, or returns None when the pool is full.

    ``ahead`` counts the tokens each request has in an unresolved launched step: its KV then already reaches that
    much further than ``kv_len`` says.
    """
    starts = [r.kv_len + ahead for r in reqs]
    # NOTE: with one-token pages no slot depends on the one before it (last_loc is -1 for every request)
    last = [-1] * len(reqs) if state.page_size == 1 else [state.last_loc(r, n) for r, n in zip(reqs, starts)]
    state.make_room(len(reqs) * (steps + state.page_size - 1))
    if steps == 1:
        got = state.allocator.alloc_decode([n + 1 for n in starts], last)
    else:
        got = state.allocator.alloc_extend(starts, [n + steps for n in starts], last)
    if got is None:
        return None
    # NOTE: the host mirror here; build_forward_batch writes the device table without a sync.
    pool: list[int] = [r.req_pool_idx for r in reqs]  # type: ignore[misc]  # scheduled: always set
    rows, cols = host_rows([pool, starts], torch.int64)
    if steps > 1:
        rows = rows.repeat_interleave(steps)
        cols = (cols[:, None] + torch.arange(steps)).reshape(-1)
    state.req_pool.write_host(rows, cols, got)
    for r, slot in zip(reqs, (got if steps == 1 else got.view(len(reqs), steps)[:, -1]).tolist()):
        r.last_slot = slot
    return ScheduleBatch(ForwardMode.DECODE, list(reqs), starts, [1] * len(reqs), got, steps=steps)


def schedule_decode(state: SchedulerState, runs: DecodeRuns | None = None) -> ScheduleBatch | None:
    """The running batch's next decode step (or run of steps), retracting the youngest requests until it fits."""
    while state.running:
        steps = runs.steps(state, state.running, ahead=0) if runs is not None else 1
        batch = decode_batch(state, state.running, ahead=0, steps=steps)
        if batch is None and steps > 1:  # NOTE: a run is an optimisation: never retract for one
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
