"""The no-sharing cache (``--disable-radix-cache``): every request keeps its own KV and frees it when it finishes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sgl.core.cache.base import CacheableReq, CacheHandle, EvictResult, MatchResult, PrefixCache


class _NoEntry(CacheHandle):
    """The one handle a ChunkCache gives out: it names no cached entry, so locking it protects nothing."""

    __slots__ = ()


_NO_ENTRY = _NoEntry()


class ChunkCache(PrefixCache):
    """Holds nothing: matches are empty, and a running request owns all of its slots until it finishes.

    NOTE: the cache's sizes are always 0, so the invariant reduces to free + request-owned == capacity.
    """

    def match_prefix(self, token_ids: Sequence[int], namespace: int = 0) -> MatchResult:
        return MatchResult(torch.empty(0, dtype=torch.int64, device=self.allocator.device), _NO_ENTRY)

    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor, namespace: int = 0) -> int:
        """Takes ownership of the slots and, keeping nothing, frees them at once; nothing was cached before."""
        if len(token_ids) != kv_indices.numel():
            raise ValueError(f"insert of {len(token_ids)} tokens with {kv_indices.numel()} KV slots")
        if len(token_ids) % self.page_size:
            raise ValueError(
                f"insert of {len(token_ids)} tokens: not a multiple of page size {self.page_size}"
            )
        self.allocator.free(kv_indices)
        return 0

    def inc_lock_ref(self, handle: CacheHandle) -> None:
        self._check(handle)

    def dec_lock_ref(self, handle: CacheHandle) -> None:
        self._check(handle)

    def evict(self, num_tokens: int) -> EvictResult:
        return EvictResult(0, 0)

    def evictable_size(self) -> int:
        return 0

    def protected_size(self) -> int:
        return 0

    def cache_finished_req(self, req: CacheableReq) -> None:
        kv = self._committed_kv(req).kv
        self.allocator.free(kv)
        req.last_handle = None

    def cache_unfinished_req(self, req: CacheableReq) -> None:
        kv = self._committed_kv(req).kv
        # NOTE: the slots stay the request's; prefix_indices only tells the next chunk where its prefix lives.
        req.prefix_indices = kv.to(self.allocator.device)
        req.last_handle = _NO_ENTRY

    def reset(self) -> None:
        return None

    def cached_slots(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64)

    def _check(self, handle: CacheHandle) -> None:
        if handle is not _NO_ENTRY:
            raise TypeError(f"not a chunk cache handle: {handle!r}")
