"""Prefill batches: which waiting requests run next, how many of their tokens, and where their KV goes.

PrefillBuilder works on the SchedulerState it is given (queues, cache, pools), never on the scheduler: building a
prefill batch (policy order, budgets, chunking, in-batch prefix deferral, mixing in the running decodes) is one
concept of its own. Scheduler features decide only whether a request is ready to be admitted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sgl.core.runner.forward_batch import ForwardMode
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.decode import decode_batch
from sgl.core.scheduler.feature import SchedulerFeature
from sgl.core.scheduler.policy import order_waiting
from sgl.core.scheduler.prefill_adder import PrefillAdder
from sgl.core.scheduler.req import Req, ReqStage
from sgl.core.scheduler.state import SchedulerState

# NOTE: prompts sharing this many leading tokens with one admitted in the same step wait a step for the cache.
IN_BATCH_PREFIX_TOKENS = 32


class PrefillBuilder:
    def __init__(self, state: SchedulerState, features: Sequence[SchedulerFeature] = ()) -> None:
        self.s = state
        self.features = tuple(features)

    def match_limit(self, r: Req) -> int:
        """How many leading tokens may come from the cache: never the last, nor those whose logprobs are asked."""
        limit = r.seq_len - 1
        if r.pooling == "mean":
            return 0  # NOTE: the mean needs every prompt token's hidden state, computed here
        if not r.input_logprobs_done:
            limit = min(limit, max(r.logprob_start_len - 1, 0))
        return limit

    def match(self, r: Req) -> tuple[int, object]:
        s = self.s
        m = s.cache.match_prefix(r.all_ids()[: self.match_limit(r)], r.cache_namespace)
        return int(m.kv_indices.numel()), m.handle

    def possible(self) -> bool:
        """A cheap upper bound: could any waiting request be admitted now? (Overlap keeps chaining when not.)"""
        s, lim = self.s, self.s.limits
        if not s.waiting or len(s.running) >= lim.max_running or s.req_pool.available_size() == 0:
            return False
        budget = s.allocator.available_size() + s.cache.evictable_size() - self.decode_reserve()
        need = min(min(r.seq_len, lim.prefill_token_budget) + s.token_ratio.reserve((r,))
                   for r in s.waiting[:32])
        return budget >= need + s.page_size

    def decode_reserve(self) -> int:
        s = self.s
        reqs = s.running + ([s.chunked] if s.chunked is not None else [])
        return s.token_ratio.reserve(reqs)

    def schedule(self) -> ScheduleBatch | None:
        s, lim = self.s, self.s.limits
        if not s.waiting and s.chunked is None:
            return None
        kv_budget = s.allocator.available_size() + s.cache.evictable_size() - self.decode_reserve()
        adder = PrefillAdder(lim.prefill_token_budget, kv_budget, lim.chunk_size,
                             idle=not s.running and s.chunked is None)
        reqs: list[Req] = []
        prefix_lens: list[int] = []
        extend_lens: list[int] = []
        slots: list[torch.Tensor] = []

        def take(r: Req, prefix: int, extend: int, got: torch.Tensor) -> None:
            reqs.append(r)
            prefix_lens.append(prefix)
            extend_lens.append(extend)
            slots.append(got)

        if s.chunked is not None:
            r = s.chunked
            # NOTE: future 0: its decodes are already reserved in kv_budget (decode_reserve counts the chunked
            # request); reserving them twice stalled a lone request's last chunk forever once the pool was tight
            res = adder.add(r.seq_len - r.kv_len, 0, s.page_size)
            if res.extend_len == 0:
                return None
            got = self.alloc_extend(r, r.kv_len, res.extend_len)
            if got is None:
                return None
            take(r, r.kv_len, res.extend_len, got)
            if not res.chunked:
                adder.chunked = True  # NOTE: one chunked request at a time, even on the step it finishes
        batch_heads: set[tuple[int, ...]] = set()
        for r in order_waiting(s.waiting, lim.policy, self.match):
            if len(s.running) + len(reqs) >= lim.max_running or s.req_pool.available_size() == 0:
                break
            if r.group is not None and s.group_leaders.get(r.group) not in (None, r.rid):
                continue  # a sibling waits for its leader's prompt to enter the cache
            if not all(f.ready(r) for f in self.features):
                continue  # a feature still prepares it (a grammar compiling); the requests behind it go ahead
            m = s.cache.match_prefix(r.all_ids()[: self.match_limit(r)], r.cache_namespace)
            prefix_len = int(m.kv_indices.numel())
            if self.defer_in_batch_duplicate(r, prefix_len, batch_heads):
                continue
            res = adder.add(r.seq_len - prefix_len, s.token_ratio.reserve((r,)), s.page_size)
            if res.extend_len == 0:
                break
            s.cache.inc_lock_ref(m.handle)
            r.req_pool_idx = s.req_pool.alloc()
            r.prefix_indices, r.last_handle, r.kv_len = m.kv_indices, m.handle, prefix_len
            if prefix_len:
                s.req_pool.write(r.req_pool_idx, 0, m.kv_indices)  # type: ignore[arg-type]
            got = self.alloc_extend(r, prefix_len, res.extend_len)
            if got is None:
                s.release(r)
                r.reset_for_recompute()
                break
            for f in self.features:  # NOTE: a recomputed request's outputs may have moved (a splice, a retraction)
                f.resync(r)
            if r.output_ids == []:
                r.cached_tokens = prefix_len
                s.counters.prefill_reqs += 1
                s.counters.prompt_tokens += len(r.origin_input_ids)
                s.counters.cached_tokens += prefix_len
            r.stage = ReqStage.PREFILL
            if res.chunked:
                s.chunked = r
            take(r, prefix_len, res.extend_len, got)
        if not reqs:
            return None
        admitted = {id(r) for r in reqs}
        s.waiting = [r for r in s.waiting if id(r) not in admitted]
        batch = ScheduleBatch(ForwardMode.EXTEND, reqs, prefix_lens, extend_lens, torch.cat(slots))
        return self.mix_in_decodes(batch) if lim.mixed_chunk and s.running else batch

    def mix_in_decodes(self, batch: ScheduleBatch) -> ScheduleBatch:
        """--enable-mixed-chunk: the running requests decode in the same forward as the prefill (MIXED), so an
        admission does not stall them for a step. Without room for their slots they simply wait, as usual."""
        s = self.s
        dec = decode_batch(s, s.running, ahead=0)
        if dec is None:
            return batch
        rows = torch.tensor([r.req_pool_idx for r in dec.reqs], dtype=torch.int64)
        s.req_pool.write_scattered(rows, torch.tensor(dec.prefix_lens, dtype=torch.int64), dec.out_cache_loc)
        s.counters.mixed_steps += 1
        return ScheduleBatch(
            ForwardMode.MIXED, batch.reqs + dec.reqs, batch.prefix_lens + dec.prefix_lens,
            batch.extend_lens + dec.extend_lens, torch.cat([batch.out_cache_loc, dec.out_cache_loc]),
        )

    def defer_in_batch_duplicate(self, r: Req, prefix_len: int, heads: set[tuple[int, ...]]) -> bool:
        """True when r's prompt starts like one already admitted this step and the cache cannot serve it yet:
        waiting one step lets r find that prompt in the cache instead of computing it twice (as SGLang's lpm)."""
        s = self.s
        if not s.limits.share_prefixes or prefix_len >= IN_BATCH_PREFIX_TOKENS:
            return False
        ids = r.origin_input_ids
        if len(ids) < 2 * IN_BATCH_PREFIX_TOKENS:
            return False
        head = (r.cache_namespace, *ids[:IN_BATCH_PREFIX_TOKENS])  # NOTE: only one namespace can share the prompt
        if head in heads:
            return True
        heads.add(head)
        return False

    def alloc_extend(self, r: Req, start: int, n: int) -> torch.Tensor | None:
        s = self.s
        last = s.last_loc(r, start)
        s.make_room(n + s.page_size)
        got = s.allocator.alloc_extend([start], [start + n], [last])
        if got is not None:
            s.req_pool.write(r.req_pool_idx, start, got)  # type: ignore[arg-type]
            r.last_slot = int(got[-1])
        return got
