"""The scheduler's state: queues, the KV ledger, counters. One object the scheduler's parts receive.

The prefill builder, the decode path, the overlap loop and the result processor each get this object (DESIGN 6);
none of them holds the scheduler. What changes a request's KV lives here, on one path: ``release`` gives KV back
(finish, abort, retraction alike), ``finish`` ends a request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from sgl.core.cache.base import PrefixCache
from sgl.core.memory.allocator import TokenAllocator
from sgl.core.memory.req_to_token import ReqToTokenPool
from sgl.core.scheduler.new_token_ratio import NewTokenRatio
from sgl.core.scheduler.req import Req, ReqStage


@dataclass
class StepCounters:
    """Cumulative counts since start; reported by ``get_server_info``."""

    prefill_reqs: int = 0  # requests admitted to their first prefill
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    retractions: int = 0
    steps: int = 0
    overlapped_steps: int = 0
    mixed_steps: int = 0
    decode_steps: int = 0
    decode_rows: int = 0
    prefill_ms: int = 0  # wall time of steps whose finished work was a prefill
    decode_ms: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SchedulingLimits:
    """What ServerArgs and the runner fix for the life of the scheduler."""

    page_size: int
    max_running: int
    chunk_size: int | None  # None: chunked prefill off
    prefill_token_budget: int
    share_prefixes: bool  # the radix cache is on
    policy: str
    mixed_chunk: bool


@dataclass
class SchedulerState:
    """NOTE: free + evictable + locked + request-owned == pool size after every step (``check_invariant``)."""

    limits: SchedulingLimits
    allocator: TokenAllocator
    cache: PrefixCache
    req_pool: ReqToTokenPool
    token_ratio: NewTokenRatio  # admission's reserve for future decodes
    waiting: list[Req] = field(default_factory=list)
    running: list[Req] = field(default_factory=list)
    chunked: Req | None = None
    reqs: dict[str, Req] = field(default_factory=dict)
    group_leaders: dict[str, str] = field(default_factory=dict)  # group -> rid of the sibling whose prefill goes first
    counters: StepCounters = field(default_factory=StepCounters)
    touched: dict[str, Req] = field(default_factory=dict)  # requests with something to report after this step
    inflight_steps: int = 0  # launched, unresolved steps (overlap)

    @property
    def page_size(self) -> int:
        return self.limits.page_size

    @property
    def is_idle(self) -> bool:
        return not self.waiting and not self.running and self.chunked is None and not self.inflight_steps

    def last_loc(self, r: Req, length: int) -> int:
        """The slot of token ``length - 1``; kept on the host (``r.last_slot``) so no device read is needed."""
        if self.page_size == 1 or length == 0:
            return -1
        if length == r.kv_len + r.inflight and r.last_slot >= 0:
            return r.last_slot
        return int(self.req_pool.host[r.req_pool_idx, length - 1])

    def make_room(self, need: int) -> None:
        """Evicts cached prefixes until ``need`` slots are free, if the cache can give them."""
        if self.allocator.available_size() < need:
            self.cache.evict(need - self.allocator.available_size())

    # release ----------------------------------------------------------------------------------------------------
    def release(self, r: Req) -> None:
        """The one way a request gives back its KV: computed tokens go to the cache, the rest to the allocator."""
        if r.req_pool_idx is None:
            return
        if r.inflight:  # NOTE: a launched step still writes this request's KV; release when it resolves
            r.release_deferred = True
            return
        r.release_deferred = False
        self._drop_uncommitted(r)
        self.cache.cache_finished_req(r)
        self.req_pool.free(r.req_pool_idx)
        r.req_pool_idx = None
        r.prefix_indices = r.prefix_indices[:0]
        r.last_handle = None
        r.kv_len = 0

    def _drop_uncommitted(self, r: Req) -> None:
        """Frees the slots a decode run wrote past the request's end (tokens dropped after a stop)."""
        self.drop_kv_after(r, r.seq_len)

    def drop_kv_after(self, r: Req, keep: int) -> None:
        """Frees the request's slots past its first ``keep`` tokens (never cached: their KV is not to be trusted).

        NOTE: whole pages only: slots on the page of the last kept token stay with it and leave with that page."""
        if r.kv_len <= keep:
            return
        p = self.page_size
        first = -(-keep // p) * p
        if first < r.kv_len:
            self.allocator.free(self.req_pool.host[r.req_pool_idx, first : r.kv_len].to(torch.int64))
        r.kv_len = keep

    def finish(self, r: Req) -> None:
        """Ends ``r`` (its ``finished_reason`` is set): KV released, out of every queue, reported this step."""
        if r.finished_reason is not None:
            self.token_ratio.observe_finish(r.finished_reason.type, len(r.output_ids),
                                            r.sampling_params.max_new_tokens, known=r.output_len_known)
        self.release(r)
        r.stage = ReqStage.FINISHED
        if r in self.waiting:
            self.waiting.remove(r)
        if r in self.running:
            self.running.remove(r)
        if self.chunked is r:
            self.chunked = None
        self.leave_group(r)
        self.touched[r.rid] = r

    def leave_group(self, r: Req) -> None:
        if r.group is not None and self.group_leaders.get(r.group) == r.rid:
            del self.group_leaders[r.group]

    def requeue(self, r: Req) -> None:
        """Back to the front of the waiting queue for recomputation (retraction, a splice); KV given back first."""
        self.release(r)
        r.reset_for_recompute()
        self.waiting.insert(0, r)

    # accounting -------------------------------------------------------------------------------------------------
    def owned_slots(self) -> int:
        """Slots held by requests outside the cache (whole pages)."""
        total = 0
        p = self.page_size
        for r in self.reqs.values():
            if r.req_pool_idx is not None:
                held = r.kv_len + r.inflight
                # NOTE: without sharing, prefix_indices are the request's own
                total += (-(-held // p)) * p - (int(r.prefix_indices.numel()) if self.limits.share_prefixes else 0)
        return total

    def check_invariant(self) -> None:
        self.cache.check_invariant(extra_owned=self.owned_slots())
        if self.is_idle:
            assert self.cache.protected_size() == 0, f"idle but {self.cache.protected_size()} slots still locked"
            assert self.req_pool.available_size() == self.limits.max_running, "idle but request slots are still held"

    def info(self) -> dict[str, Any]:
        size = self.allocator.size
        free = self.allocator.available_size()
        evictable = self.cache.evictable_size()
        c = self.counters
        return {
            "max_total_tokens": size, "available_tokens": free, "evictable_tokens": evictable,
            "locked_tokens": self.cache.protected_size(), "request_owned_tokens": self.owned_slots(),
            "token_usage": round((size - free - evictable) / size, 4) if size else 0.0,
            "num_running_reqs": len(self.running) + (1 if self.chunked is not None else 0),
            "num_waiting_reqs": len(self.waiting), "max_running_requests": self.limits.max_running,
            "page_size": self.page_size, **c.as_dict(),
            "new_token_ratio": round(self.token_ratio.value, 4),
            "cache_hit_rate": round(c.cached_tokens / max(c.prompt_tokens, 1), 4),
        }
