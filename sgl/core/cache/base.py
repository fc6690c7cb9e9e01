"""The prefix-cache contract: match, insert, lock, evict, and the two request hand-offs the scheduler makes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch

if TYPE_CHECKING:
    from sgl.core.memory.allocator import TokenAllocator
    from sgl.core.memory.req_to_token import ReqToTokenPool


class CacheHandle:
    """Opaque position in a cache (a tree node for the radix cache). Lock it to keep its prefix from eviction."""

    __slots__ = ()


class MatchResult(NamedTuple):
    kv_indices: torch.Tensor  # int64 KV slots of the matched prefix, in order; its length is page-aligned
    handle: CacheHandle  # opaque; lock it before using kv_indices across steps


class EvictResult(NamedTuple):
    num_evicted: int  # tokens (slots) handed back to the allocator; may exceed the request, nodes go whole
    num_nodes: int  # cache entries removed


class CommittedKV(NamedTuple):
    row: int  # the request's req_to_token row
    token_ids: list[int]  # tokens whose KV is written
    kv: torch.Tensor  # their slots: an int64 copy, safe to keep after the row is reused


class CacheableReq(Protocol):
    """What a cache reads and writes of a request."""

    prefix_indices: torch.Tensor  # slots of its prefix that the cache owns (radix) or it owns (chunk)
    last_handle: CacheHandle | None  # the handle it holds a lock on, if any
    # optional ``cache_namespace: int`` (0 when absent): KV is shared only within one namespace (see namespace_of)

    @property
    def req_pool_idx(self) -> int | None:
        """Its row in ReqToTokenPool; None once released (the caches refuse such a request). Read-only here."""
        ...

    def kv_committed_ids(self) -> list[int]:
        """Token ids whose KV is written in ``req_to_token[req_pool_idx, :len]``."""
        ...


def namespace_of(req: CacheableReq) -> int:
    """The request's cache namespace: its KV is shared only with requests of the same one (0: the base model;
    a LoRA adapter's requests compute different KV for the same tokens)."""
    return int(getattr(req, "cache_namespace", 0))


class PrefixCache(ABC):
    """A cache of KV slots keyed by token prefix.

    NOTE: ownership is exact: every usable slot is free in the allocator, held by the cache (evictable or locked),
    or owned by a running request outside the cache; ``check_invariant`` asserts the sum. When nothing holds a lock,
    ``protected_size() == 0``.
    """

    def __init__(
        self, req_to_token_pool: ReqToTokenPool, allocator: TokenAllocator, page_size: int = 1
    ) -> None:
        if page_size != allocator.page_size:
            raise ValueError(f"cache page size {page_size} != allocator page size {allocator.page_size}")
        self.req_to_token_pool = req_to_token_pool
        self.allocator = allocator
        self.page_size = page_size

    @abstractmethod
    def match_prefix(self, token_ids: Sequence[int], namespace: int = 0) -> MatchResult:
        """Longest cached page-aligned prefix of ``token_ids`` in ``namespace`` (possibly all of it); refreshes its
        LRU time. Entries of another namespace never match."""

    @abstractmethod
    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor, namespace: int = 0) -> int:
        """Caches ``token_ids`` (page-aligned length) at ``kv_indices``; returns how many leading tokens were
        already cached. Their slots in ``kv_indices`` stay the caller's to free; the rest now belong to the cache."""

    @abstractmethod
    def inc_lock_ref(self, handle: CacheHandle) -> None:
        """Protects the prefix ending at ``handle`` from eviction."""

    @abstractmethod
    def dec_lock_ref(self, handle: CacheHandle) -> None:
        """Undoes one ``inc_lock_ref(handle)``."""

    @abstractmethod
    def evict(self, num_tokens: int) -> EvictResult:
        """Frees at least ``num_tokens`` slots (if that many are evictable), least recently used unlocked leaves
        first."""

    @abstractmethod
    def evictable_size(self) -> int:
        """Cached tokens that no lock protects."""

    @abstractmethod
    def protected_size(self) -> int:
        """Cached tokens on some locked path."""

    def total_cached(self) -> int:
        return self.evictable_size() + self.protected_size()

    @abstractmethod
    def cache_finished_req(self, req: CacheableReq) -> None:
        """Hands a finished request's KV to the cache: inserts the aligned committed tokens, frees duplicates and
        the unaligned tail, and unlocks ``req.last_handle``. The req_to_token row stays the caller's to free."""

    @abstractmethod
    def cache_unfinished_req(self, req: CacheableReq) -> None:
        """Shares a still-running request's committed KV and points it at the cache's copy: afterwards
        ``req.prefix_indices`` are cache-held (and locked) and the unaligned tail is still owned by the request."""

    @abstractmethod
    def reset(self) -> None:
        """Drops every entry and frees its slots; raises if a lock is still held."""

    @abstractmethod
    def cached_slots(self) -> torch.Tensor:
        """Every slot the cache holds (int64, CPU). Walks the whole cache: for debug checks and tests only."""

    def _committed_kv(self, req: CacheableReq) -> CommittedKV:
        """The request's committed token ids and a private int64 copy of their slots."""
        if req.req_pool_idx is None:
            raise ValueError("request holds no req_to_token row: it was already released")
        token_ids = req.kv_committed_ids()
        row = self.req_to_token_pool.read(req.req_pool_idx, len(token_ids))
        return CommittedKV(req.req_pool_idx, token_ids, row.clone())

    def check_invariant(self, extra_owned: int = 0) -> None:
        """Asserts free + evictable + protected + ``extra_owned`` == capacity (``extra_owned``: slots running
        requests own outside the cache), plus whatever internal bookkeeping the implementation can verify."""
        free, ev, prot = self.allocator.available_size(), self.evictable_size(), self.protected_size()
        assert free + ev + prot + extra_owned == self.allocator.size, (
            f"KV accounting broken: free {free} + evictable {ev} + protected {prot} + request-owned {extra_owned} "
            f"!= capacity {self.allocator.size}"
        )
