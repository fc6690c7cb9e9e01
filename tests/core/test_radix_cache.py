"""RadixCache and ChunkCache: match/split/insert/evict/lock with page sizes 1 and 4, and the request hand-offs."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from sgl.core.cache.base import CacheHandle
from sgl.core.cache.chunk_cache import ChunkCache
from sgl.core.cache.radix_cache import RadixCache
from sgl.core.memory.allocator import TokenAllocator
from sgl.core.memory.req_to_token import ReqToTokenPool


@dataclass
class FakeReq:
    req_pool_idx: int
    token_ids: list[int]
    prefix_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    last_handle: CacheHandle | None = None

    def kv_committed_ids(self) -> list[int]:
        return list(self.token_ids)


def make(page_size: int, size: int = 64) -> tuple[ReqToTokenPool, TokenAllocator, RadixCache]:
    pool = ReqToTokenPool(4, 64)
    alloc = TokenAllocator(size, page_size)
    return pool, alloc, RadixCache(pool, alloc, page_size)


def put(cache: RadixCache, alloc: TokenAllocator, tokens: list[int]) -> torch.Tensor:
    """Allocates fresh slots for ``tokens``, inserts them, frees the duplicates; returns the fresh slots."""
    slots = alloc.alloc_extend([0], [len(tokens)], [-1])
    assert slots is not None
    cached = cache.insert(tokens, slots)
    if cached:
        alloc.free(slots[:cached])
    return slots


def admit(
    cache: RadixCache | ChunkCache, alloc: TokenAllocator, pool: ReqToTokenPool, tokens: list[int]
) -> FakeReq:
    """What the scheduler does on admission: match, lock, and allocate the rest."""
    row = pool.alloc()
    assert row is not None
    match = cache.match_prefix(tokens)
    cache.inc_lock_ref(match.handle)
    plen = match.kv_indices.numel()
    pool.write(row, 0, match.kv_indices)
    last = int(match.kv_indices[-1]) if plen else -1
    new = alloc.alloc_extend([plen], [len(tokens)], [last])
    assert new is not None
    pool.write(row, plen, new)
    return FakeReq(row, list(tokens), match.kv_indices, match.handle)


# ---- page size 1 -------------------------------------------------------------------------------------------------


def test_empty_cache_matches_nothing() -> None:
    _, _, cache = make(1)
    m = cache.match_prefix([1, 2, 3])
    assert m.kv_indices.numel() == 0 and m.kv_indices.dtype == torch.int64
    cache.inc_lock_ref(m.handle)  # the root: locking it protects nothing
    assert cache.protected_size() == 0
    cache.dec_lock_ref(m.handle)


def test_match_after_insert_returns_the_inserted_slots() -> None:
    _, alloc, cache = make(1)
    slots = put(cache, alloc, [1, 2, 3, 4, 5])
    assert cache.match_prefix([1, 2, 3, 4, 5]).kv_indices.tolist() == slots.tolist()
    assert cache.match_prefix([1, 2, 3, 4, 5, 6, 7]).kv_indices.tolist() == slots.tolist()
    assert cache.match_prefix([1, 2, 9]).kv_indices.tolist() == slots[:2].tolist()
    assert cache.match_prefix([9]).kv_indices.numel() == 0
    cache.check_invariant()


def test_match_ending_inside_a_node_splits_it_without_changing_slots() -> None:
    _, alloc, cache = make(1)
    slots = put(cache, alloc, [1, 2, 3, 4, 5, 6])
    assert cache.match_prefix([1, 2, 3, 0]).kv_indices.tolist() == slots[:3].tolist()
    cache.check_invariant()  # the split is a node more, the same tokens
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).kv_indices.tolist() == slots.tolist()
    assert cache.total_cached() == 6


def test_insert_reports_the_cached_prefix_and_caches_only_the_rest() -> None:
    _, alloc, cache = make(1)
    first = put(cache, alloc, [1, 2, 3, 4])
    fresh = alloc.alloc(6)
    assert fresh is not None
    assert cache.insert([1, 2, 3, 7, 8, 9], fresh) == 3
    alloc.free(fresh[:3])
    assert (
        cache.match_prefix([1, 2, 3, 7, 8, 9]).kv_indices.tolist() == first[:3].tolist() + fresh[3:].tolist()
    )
    assert cache.insert([1, 2, 3, 4], first.clone()) == 4  # all cached: nothing changes hands
    assert cache.total_cached() == 7
    cache.check_invariant()


def test_cached_slots_do_not_alias_the_callers_tensor() -> None:
    _, alloc, cache = make(1)
    slots = alloc.alloc(3)
    assert slots is not None
    expected = slots.tolist()
    cache.insert([1, 2, 3], slots)
    slots.fill_(0)  # e.g. a req_to_token row reused by the next request
    assert cache.match_prefix([1, 2, 3]).kv_indices.tolist() == expected


def test_evict_frees_the_least_recently_used_leaf_first() -> None:
    _, alloc, cache = make(1)
    put(cache, alloc, [1, 1, 1])
    put(cache, alloc, [2, 2, 2])
    cache.match_prefix([1, 1, 1])  # refresh: [2, 2, 2] is now the oldest
    res = cache.evict(1)
    assert res.num_evicted == 3 and res.num_nodes == 1
    assert cache.match_prefix([2, 2, 2]).kv_indices.numel() == 0
    assert cache.match_prefix([1, 1, 1]).kv_indices.numel() == 3
    cache.check_invariant()


def test_evict_reaches_parents_once_their_children_are_gone() -> None:
    _, alloc, cache = make(1)
    put(cache, alloc, [1, 2, 3])
    put(cache, alloc, [1, 2, 4])  # splits into [1,2] -> {[3], [4]}
    assert cache.evict(100).num_evicted == 4
    assert cache.total_cached() == 0 and alloc.available_size() == 64
    cache.check_invariant()


def test_a_locked_prefix_survives_eviction_and_counts_as_protected() -> None:
    _, alloc, cache = make(1)
    slots = put(cache, alloc, [1, 2, 3, 4])
    put(cache, alloc, [5, 6])
    m = cache.match_prefix([1, 2, 3])
    cache.inc_lock_ref(m.handle)
    assert cache.protected_size() == 3 and cache.evictable_size() == 3
    assert cache.evict(100).num_evicted == 3  # [4] and [5, 6]; [1, 2, 3] is locked
    assert cache.match_prefix([1, 2, 3, 4]).kv_indices.tolist() == slots[:3].tolist()
    assert not bool(alloc.free_slot_mask()[slots[:3]].any())
    cache.check_invariant()
    cache.dec_lock_ref(m.handle)
    assert cache.protected_size() == 0 and cache.evictable_size() == 3
    assert cache.evict(3).num_evicted == 3
    cache.check_invariant()


def test_a_split_below_a_locked_handle_keeps_the_lock_on_the_whole_path() -> None:
    _, alloc, cache = make(1)
    put(cache, alloc, [1, 2, 3, 4])
    m = cache.match_prefix([1, 2, 3, 4])
    cache.inc_lock_ref(m.handle)
    put(cache, alloc, [1, 2, 9])  # splits the locked node into [1, 2] -> [3, 4]
    assert cache.protected_size() == 4 and cache.evictable_size() == 1
    cache.check_invariant()
    cache.dec_lock_ref(m.handle)
    assert cache.protected_size() == 0
    cache.check_invariant()


def test_unbalanced_unlock_and_stale_handles_raise() -> None:
    _, alloc, cache = make(1)
    put(cache, alloc, [1, 2])
    m = cache.match_prefix([1, 2])
    with pytest.raises(RuntimeError, match="no lock"):
        cache.dec_lock_ref(m.handle)
    cache.evict(2)
    with pytest.raises(RuntimeError, match="evicted"):
        cache.inc_lock_ref(m.handle)


def test_reset_frees_every_slot_and_refuses_while_locked() -> None:
    _, alloc, cache = make(1)
    put(cache, alloc, [1, 2, 3])
    m = cache.match_prefix([1])
    cache.inc_lock_ref(m.handle)
    with pytest.raises(RuntimeError, match="locked"):
        cache.reset()
    cache.dec_lock_ref(m.handle)
    cache.reset()
    assert cache.total_cached() == 0 and alloc.available_size() == 64
    cache.check_invariant()


# ---- page size 4 -------------------------------------------------------------------------------------------------


def test_page_size_4_matches_whole_pages_only() -> None:
    _, alloc, cache = make(4)
    slots = put(cache, alloc, list(range(8)))
    assert cache.match_prefix(list(range(7))).kv_indices.tolist() == slots[:4].tolist()
    assert cache.match_prefix([0, 1, 2, 3, 4, 5, 9, 9]).kv_indices.tolist() == slots[:4].tolist()
    assert cache.match_prefix([0, 1, 2, 9]).kv_indices.numel() == 0
    cache.check_invariant()


def test_page_size_4_siblings_differ_in_their_first_page() -> None:
    _, alloc, cache = make(4)
    a = put(cache, alloc, [1, 2, 3, 4, 5, 6, 7, 8])
    b = put(cache, alloc, [1, 2, 3, 5, 5, 6, 7, 8])  # differs inside the first page: no sharing
    assert cache.match_prefix([1, 2, 3, 4, 5, 6, 7, 8]).kv_indices.tolist() == a.tolist()
    assert cache.match_prefix([1, 2, 3, 5, 5, 6, 7, 8]).kv_indices.tolist() == b.tolist()
    assert cache.total_cached() == 16
    cache.check_invariant()


def test_page_size_4_insert_splits_at_a_page_boundary() -> None:
    _, alloc, cache = make(4)
    a = put(cache, alloc, list(range(12)))
    fresh = alloc.alloc(8)
    assert fresh is not None
    assert cache.insert([0, 1, 2, 3, 4, 5, 9, 9], fresh) == 4  # mismatch at token 6 rounds down to 4
    alloc.free(fresh[:4])
    assert (
        cache.match_prefix([0, 1, 2, 3, 4, 5, 9, 9]).kv_indices.tolist()
        == a[:4].tolist() + fresh[4:].tolist()
    )
    assert cache.match_prefix(list(range(12))).kv_indices.tolist() == a.tolist()
    cache.check_invariant()
    assert cache.evict(1).num_evicted == 4  # a whole leaf of one page goes
    cache.check_invariant()


def test_page_size_4_rejects_unaligned_insert() -> None:
    _, _, cache = make(4)
    with pytest.raises(ValueError, match="multiple of page size"):
        cache.insert([1, 2, 3], torch.tensor([4, 5, 6]))


# ---- request hand-offs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 4])
def test_finished_request_frees_its_duplicates_and_tail_and_unlocks(page_size: int) -> None:
    pool, alloc, cache = make(page_size)
    shared = list(range(8))
    first = admit(cache, alloc, pool, shared + [100, 101])
    second = admit(cache, alloc, pool, shared + [200, 201, 202])  # computed the shared part again
    cache.cache_finished_req(first)
    cache.cache_finished_req(second)
    assert first.last_handle is None and second.last_handle is None
    assert cache.protected_size() == 0
    cache.check_invariant()  # nothing owned outside the tree: duplicates and tails were freed
    aligned = 10 - 10 % page_size
    assert cache.match_prefix(shared + [100, 101]).kv_indices.numel() == aligned


@pytest.mark.parametrize("page_size", [1, 4])
def test_unfinished_request_is_pointed_at_the_tree_and_keeps_its_tail(page_size: int) -> None:
    pool, alloc, cache = make(page_size)
    put(cache, alloc, list(range(4)))
    req = FakeReq(pool.alloc() or 0, list(range(10)))  # computed all 10 itself (no match at admission)
    own = alloc.alloc_extend([0], [10], [-1])
    assert own is not None
    pool.write(req.req_pool_idx, 0, own)
    cache.cache_unfinished_req(req)
    aligned = 10 - 10 % page_size
    tree = cache.match_prefix(list(range(10))).kv_indices
    assert req.prefix_indices.tolist() == tree.tolist() and tree.numel() == aligned
    assert pool.req_to_token[req.req_pool_idx, :aligned].tolist() == tree.tolist()
    assert cache.protected_size() == aligned
    tail_pages = -(-(10 - aligned) // page_size) * page_size
    cache.check_invariant(extra_owned=tail_pages)
    req.token_ids += [10, 11]  # decodes on; the scheduler allocates as usual
    more = alloc.alloc_extend([10], [12], [int(pool.req_to_token[req.req_pool_idx, 9])])
    assert more is not None
    pool.write(req.req_pool_idx, 10, more)
    cache.cache_finished_req(req)
    assert cache.protected_size() == 0
    cache.check_invariant()


def test_chunk_cache_never_shares_and_frees_everything_on_finish() -> None:
    pool, alloc = ReqToTokenPool(4, 64), TokenAllocator(32, 4)
    cache = ChunkCache(pool, alloc, 4)
    req = admit(cache, alloc, pool, list(range(6)))
    assert req.prefix_indices.numel() == 0
    cache.cache_unfinished_req(req)
    assert req.prefix_indices.tolist() == pool.req_to_token[req.req_pool_idx, :6].tolist()
    cache.check_invariant(extra_owned=8)
    assert cache.match_prefix(list(range(6))).kv_indices.numel() == 0
    cache.cache_finished_req(req)
    assert alloc.available_size() == 32 and cache.total_cached() == 0
    cache.check_invariant()


def test_cache_page_size_must_match_the_allocator() -> None:
    with pytest.raises(ValueError, match="page size"):
        RadixCache(ReqToTokenPool(1, 8), TokenAllocator(16, 4), 1)
