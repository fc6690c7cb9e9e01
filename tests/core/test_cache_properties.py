"""Property tests: random request lifecycles and raw cache operations keep the KV ownership invariants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl.core.cache.base import CacheHandle, PrefixCache
from sgl.core.cache.chunk_cache import ChunkCache
from sgl.core.cache.radix_cache import RadixCache
from sgl.core.memory.allocator import TokenAllocator
from sgl.core.memory.req_to_token import ReqToTokenPool

POOL_SLOTS = 64
ROWS = 4
CONTEXT = 40
# NOTE: a few shared "system prompts" plus a binary suffix make page-sized sharing common, not a 1-in-81 event.
PROMPTS = [[0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 2, 0, 2, 2, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]]


@dataclass
class FakeReq:
    req_pool_idx: int
    token_ids: list[int]
    prefix_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    last_handle: CacheHandle | None = None

    def kv_committed_ids(self) -> list[int]:
        return list(self.token_ids)


token_seqs = st.builds(
    lambda p, n, suffix: PROMPTS[p][:n] + suffix,
    st.integers(0, len(PROMPTS) - 1),
    st.integers(0, len(PROMPTS[0])),
    st.lists(st.integers(0, 1), max_size=8),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), token_seqs),
        st.tuples(st.just("decode"), st.integers(0, ROWS - 1), st.integers(0, 2)),
        st.tuples(st.just("unfinish"), st.integers(0, ROWS - 1)),
        st.tuples(
            st.just("extend"), st.integers(0, ROWS - 1), st.lists(st.integers(0, 2), min_size=1, max_size=6)
        ),
        st.tuples(st.just("finish"), st.integers(0, ROWS - 1), st.booleans()),
        st.tuples(st.just("match_lock"), token_seqs),
        st.tuples(st.just("unlock"), st.integers(0, 7)),
        st.tuples(st.just("evict"), st.integers(1, 24)),
        st.tuples(st.just("insert"), token_seqs),
        st.tuples(st.just("match"), token_seqs),
    ),
    max_size=40,
)


class Driver:
    """Plays the scheduler's part: admits requests (match, lock, allocate), decodes, chunks and finishes them."""

    def __init__(self, page_size: int, radix: bool) -> None:
        self.ps = page_size
        self.radix = radix
        self.pool = ReqToTokenPool(ROWS, CONTEXT + 8)
        self.alloc = TokenAllocator(POOL_SLOTS, page_size)
        kind = RadixCache if radix else ChunkCache
        self.cache: PrefixCache = kind(self.pool, self.alloc, page_size)
        self.running: list[FakeReq] = []
        self.held: list[tuple[CacheHandle, torch.Tensor]] = []  # raw locks taken outside any request

    def row(self, req: FakeReq) -> list[int]:
        return self.pool.req_to_token[req.req_pool_idx, : len(req.token_ids)].tolist()

    def owned(self, req: FakeReq) -> list[int]:
        """Slots the request owns outside the cache: past its cache-held prefix (all of them without sharing)."""
        start = req.prefix_indices.numel() if self.radix else 0
        return self.row(req)[start:]

    def alloc_or_evict(self, fn: Any, *args: Any) -> torch.Tensor | None:
        out = fn(*args)
        if out is None:
            self.cache.evict(POOL_SLOTS)
            out = fn(*args)
        return out

    # ---- operations ----------------------------------------------------------------------------------------------

    def admit(self, tokens: list[int]) -> None:
        if not tokens or self.pool.available_size() == 0:
            return
        match = self.cache.match_prefix(tokens)
        self.cache.inc_lock_ref(match.handle)
        plen = match.kv_indices.numel()
        assert plen % self.ps == 0 and plen <= len(tokens)
        last = int(match.kv_indices[-1]) if plen else -1
        new = self.alloc_or_evict(self.alloc.alloc_extend, [plen], [len(tokens)], [last])
        if new is None:
            self.cache.dec_lock_ref(match.handle)
            return
        row = self.pool.alloc()
        assert row is not None
        self.pool.write(row, 0, match.kv_indices)
        self.pool.write(row, plen, new)
        self.running.append(FakeReq(row, list(tokens), match.kv_indices, match.handle))

    def decode(self, i: int, token: int) -> None:
        if not self.running:
            return
        req = self.running[i % len(self.running)]
        if len(req.token_ids) >= CONTEXT:
            return
        last = self.row(req)[-1]
        out = self.alloc_or_evict(self.alloc.alloc_decode, [len(req.token_ids) + 1], [last])
        if out is None:
            return
        self.pool.write(req.req_pool_idx, len(req.token_ids), out)
        req.token_ids.append(token)

    def extend(self, i: int, tokens: list[int]) -> None:
        """The next prefill chunk: its first tokens fill the request's open page (prefix unaligned after a chunk)."""
        if not self.running:
            return
        req = self.running[i % len(self.running)]
        n = len(req.token_ids)
        if n + len(tokens) > CONTEXT:
            return
        out = self.alloc_or_evict(self.alloc.alloc_extend, [n], [n + len(tokens)], [self.row(req)[-1]])
        if out is None:
            return
        self.pool.write(req.req_pool_idx, n, out)
        req.token_ids += tokens

    def unfinish(self, i: int) -> None:
        if self.running:
            self.cache.cache_unfinished_req(self.running[i % len(self.running)])

    def finish(self, i: int, rematch: bool = False) -> None:
        if not self.running:
            return
        req = self.running.pop(i % len(self.running))
        self.cache.cache_finished_req(req)
        self.pool.free(req.req_pool_idx)
        # NOTE: optional, since the re-match refreshes LRU entries and could hide a missed eviction candidate.
        if self.radix and rematch:
            aligned = len(req.token_ids) - len(req.token_ids) % self.ps
            assert self.cache.match_prefix(req.token_ids).kv_indices.numel() == aligned

    def match_lock(self, tokens: list[int]) -> None:
        match = self.cache.match_prefix(tokens)
        self.cache.inc_lock_ref(match.handle)
        self.held.append((match.handle, match.kv_indices))

    def unlock(self, i: int) -> None:
        if self.held:
            self.cache.dec_lock_ref(self.held.pop(i % len(self.held))[0])

    def evict(self, n: int) -> None:
        protected = self.cache.protected_size()
        evictable = self.cache.evictable_size()
        res = self.cache.evict(n)
        assert self.cache.protected_size() == protected, "eviction touched a locked entry"
        assert res.num_evicted == evictable - self.cache.evictable_size()
        assert res.num_evicted >= min(n, evictable)

    def insert(self, tokens: list[int]) -> None:
        tokens = tokens[: len(tokens) - len(tokens) % self.ps]
        if not tokens:
            return
        fresh = self.alloc_or_evict(self.alloc.alloc, len(tokens))
        if fresh is None:
            return
        before = self.cache.match_prefix(tokens).kv_indices
        cached = self.cache.insert(tokens, fresh)
        if self.radix:
            assert cached == before.numel()
            after = self.cache.match_prefix(tokens).kv_indices
            assert after.tolist() == before.tolist() + fresh[cached:].tolist()
            if cached:
                self.alloc.free(fresh[:cached])
        else:
            assert cached == 0 and self.cache.match_prefix(tokens).kv_indices.numel() == 0

    def match(self, tokens: list[int]) -> None:
        kv = self.cache.match_prefix(tokens).kv_indices
        assert kv.numel() % self.ps == 0 and kv.numel() <= len(tokens)

    # ---- the invariants ------------------------------------------------------------------------------------------

    def check(self) -> None:
        owned = [s for req in self.running for s in self.owned(req)]
        assert len(owned) == len(set(owned)), "a slot is owned by two requests"
        pages = {s // self.ps for s in owned}
        self.cache.check_invariant(extra_owned=len(pages) * self.ps)
        cached = set(self.cache.cached_slots().tolist())
        free = self.alloc.free_slot_mask()
        assert not cached & set(owned), "a request-owned slot is also in the cache"
        assert not any(bool(free[s]) for s in owned), "a request-owned slot is also free"
        locked = [s for req in self.running for s in req.prefix_indices.tolist() if self.radix]
        locked += [s for _, kv in self.held for s in kv.tolist()]
        assert set(locked) <= cached, "a locked slot left the cache"
        if not self.running and not self.held:
            assert self.cache.protected_size() == 0, "protected tokens with no lock held"
        for req in self.running:
            row = self.row(req)
            assert all(s % self.ps == j % self.ps for j, s in enumerate(row)), (
                "a slot sits at the wrong page offset"
            )
            if self.radix:
                assert row[: req.prefix_indices.numel()] == req.prefix_indices.tolist()

    def drain(self) -> None:
        """Finishing everything and dropping raw locks must leave an unlocked cache and no leaked slot."""
        while self.running:
            self.finish(0)
            self.check()
        while self.held:
            self.unlock(0)
        self.check()
        assert self.cache.protected_size() == 0
        self.cache.evict(POOL_SLOTS)
        assert self.alloc.available_size() == POOL_SLOTS
        self.check()


def run(page_size: int, radix: bool, program: list[tuple[Any, ...]]) -> None:
    driver = Driver(page_size, radix)
    for op, *args in program:
        getattr(driver, op)(*args)
        driver.check()
    driver.drain()


@settings(max_examples=60, deadline=None)
@given(page_size=st.sampled_from([1, 4]), program=ops)
def test_radix_cache_keeps_every_slot_owned_exactly_once(
    page_size: int, program: list[tuple[Any, ...]]
) -> None:
    """Invariant, after every step of any mix of admit/decode/chunk/finish/match/lock/unlock/evict/insert:
    free + evictable + protected + request-owned == pool size; no slot is both free and held, or held twice;
    eviction never frees a locked entry; a match right after an insert returns exactly the slots inserted (after the
    already-cached prefix); protected == 0 whenever no lock is held; draining everything frees every slot."""
    run(page_size, True, program)


@settings(max_examples=30, deadline=None)
@given(page_size=st.sampled_from([1, 4]), program=ops)
def test_chunk_cache_keeps_every_slot_owned_exactly_once(
    page_size: int, program: list[tuple[Any, ...]]
) -> None:
    """Invariant without sharing: free + request-owned == pool size after every step, the cache never holds a slot,
    and finishing every request returns the whole pool."""
    run(page_size, False, program)
