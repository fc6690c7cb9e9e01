"""The radix prefix cache: a tree of token runs whose values are KV slots, shared by every request with that prefix."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from sgl.core.cache.base import CacheableReq, CacheHandle, EvictResult, MatchResult, PrefixCache, namespace_of

if TYPE_CHECKING:
    from sgl.core.memory.allocator import TokenAllocator
    from sgl.core.memory.req_to_token import ReqToTokenPool

_ChildKey = int | tuple[int, ...]
_NAMESPACE_SHIFT = 32


def _keys(token_ids: Sequence[int], namespace: int) -> list[int]:
    """The tree's keys for ``token_ids`` in ``namespace``.

    NOTE: namespace n > 0 lifts every token id by n << 32 (token ids are below 2**32), so the namespaces' keys are
    disjoint: one tree, one LRU and one KV ledger, yet no node is ever shared across namespaces."""
    if namespace == 0:
        return list(token_ids)
    if namespace < 0:
        raise ValueError(f"cache namespace must be >= 0, got {namespace}")
    lift = namespace << _NAMESPACE_SHIFT
    return [t + lift for t in token_ids]


class _Node(CacheHandle):
    """One run of tokens. ``value[i]`` is the KV slot of ``key[i]``.

    NOTE: ``lock_ref`` counts the locks taken on this node or any descendant, so it never decreases toward the root
    and a node with ``lock_ref == 0`` has an unlocked subtree. A removed node has ``parent is None`` (as has the root).
    """

    __slots__ = ("children", "key", "last_access", "lock_ref", "parent", "value")

    def __init__(self, key: list[int], value: torch.Tensor, parent: _Node | None, last_access: int) -> None:
        self.children: dict[_ChildKey, _Node] = {}
        self.parent = parent
        self.key = key
        self.value = value
        self.lock_ref = 0
        self.last_access = last_access


class RadixCache(PrefixCache):
    """Prefix sharing over the KV pool.

    NOTE: with page_size > 1 every node's key is a whole number of pages and children are keyed by their first page,
    so matches, splits and evictions are page-granular and the tree only ever holds whole pages.
    NOTE: evictable/protected sizes are kept incrementally; eviction pops a lazy min-heap of (last_access, seq, leaf)
    entries and skips the stale ones (node gone, grown children, locked, or touched since).
    """

    def __init__(
        self, req_to_token_pool: ReqToTokenPool, allocator: TokenAllocator, page_size: int = 1
    ) -> None:
        super().__init__(req_to_token_pool, allocator, page_size)
        self._clock = itertools.count(1)
        self._seq = itertools.count()
        self._empty = torch.empty(0, dtype=torch.int64, device=allocator.device)
        self._init_tree()

    def _init_tree(self) -> None:
        self._root = _Node([], self._empty, None, 0)
        self._root.lock_ref = 1  # NOTE: the root is never evictable and is not counted in either size
        self._evictable = 0
        self._protected = 0
        self._num_nodes = 0
        self._heap: list[tuple[int, int, _Node]] = []

    # ---- lookup and insertion ------------------------------------------------------------------------------------

    def match_prefix(self, token_ids: Sequence[int], namespace: int = 0) -> MatchResult:
        tokens = _keys(token_ids, namespace)
        end = len(tokens) - len(tokens) % self.page_size
        node, pos = self._root, 0
        values: list[torch.Tensor] = []
        while pos < end:
            child = node.children.get(self._child_key(tokens, pos))
            if child is None:
                break
            m = self._match_len(child.key, tokens, pos, end)
            self._touch(child)
            partial = m < len(child.key)
            if partial:
                child = self._split(child, m)
            values.append(child.value)
            node, pos = child, pos + m
            if partial:
                break
        kv = torch.cat(values) if values else self._empty
        return MatchResult(kv, node)

    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor, namespace: int = 0) -> int:
        tokens = _keys(token_ids, namespace)
        n = len(tokens)
        if n % self.page_size:
            raise ValueError(
                f"insert of {n} tokens: the length must be a multiple of page size {self.page_size}"
            )
        if kv_indices.numel() != n:
            raise ValueError(f"insert of {n} tokens with {kv_indices.numel()} KV slots")
        kv = kv_indices.reshape(-1).to(device=self.allocator.device, dtype=torch.int64)
        node, pos = self._root, 0
        while pos < n:
            key = self._child_key(tokens, pos)
            child = node.children.get(key)
            if child is None:
                leaf = _Node(tokens[pos:], kv[pos:].clone(), node, next(self._clock))
                node.children[key] = leaf
                self._evictable += n - pos
                self._num_nodes += 1
                self._push(leaf)
                return pos
            m = self._match_len(child.key, tokens, pos, n)
            self._touch(child)
            if m < len(child.key):
                child = self._split(child, m)
            node, pos = child, pos + m
        return pos

    # ---- locking -------------------------------------------------------------------------------------------------

    def inc_lock_ref(self, handle: CacheHandle) -> None:
        node = self._live(handle)
        while node is not self._root:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            assert node.parent is not None
            node = node.parent

    def dec_lock_ref(self, handle: CacheHandle) -> None:
        node = self._live(handle)
        if node is not self._root and node.lock_ref <= 0:
            raise RuntimeError("dec_lock_ref on a cache handle that holds no lock")
        while node is not self._root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._protected -= len(node.key)
                self._evictable += len(node.key)
                self._push(node)
            assert node.parent is not None
            node = node.parent

    # ---- eviction and sizes --------------------------------------------------------------------------------------

    def evict(self, num_tokens: int) -> EvictResult:
        freed: list[torch.Tensor] = []
        num_evicted = num_nodes = 0
        while num_evicted < num_tokens and self._heap:
            stamp, _, node = heapq.heappop(self._heap)
            if stamp != node.last_access or not self._is_evictable_leaf(node):
                continue
            parent = node.parent
            assert parent is not None
            del parent.children[self._child_key(node.key, 0)]
            node.parent = None
            freed.append(node.value)
            num_evicted += len(node.key)
            num_nodes += 1
            self._evictable -= len(node.key)
            self._num_nodes -= 1
            self._push(parent)
        if freed:
            self.allocator.free(torch.cat(freed))
        return EvictResult(num_evicted, num_nodes)

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    # ---- request hand-offs ---------------------------------------------------------------------------------------

    def cache_finished_req(self, req: CacheableReq) -> None:
        _, token_ids, kv = self._committed_kv(req)
        aligned = len(token_ids) - len(token_ids) % self.page_size
        cached = self.insert(token_ids[:aligned], kv[:aligned], namespace_of(req))
        self._free_duplicates(req, kv, cached)
        if aligned < len(token_ids):
            self.allocator.free(kv[aligned:])  # NOTE: the partial last page is the request's alone
        if req.last_handle is not None:
            self.dec_lock_ref(req.last_handle)
            req.last_handle = None

    def cache_unfinished_req(self, req: CacheableReq) -> None:
        row, token_ids, kv = self._committed_kv(req)
        aligned = len(token_ids) - len(token_ids) % self.page_size
        ns = namespace_of(req)
        cached = self.insert(token_ids[:aligned], kv[:aligned], ns)
        self._free_duplicates(req, kv, cached)
        match = self.match_prefix(token_ids[:aligned], ns)
        assert match.kv_indices.numel() == aligned, "a prefix just inserted must match in full"
        start = req.prefix_indices.numel()
        if start < aligned:
            self.req_to_token_pool.write(row, start, match.kv_indices[start:])
        # NOTE: lock the new path before unlocking the old so shared ancestors never flip to evictable.
        self.inc_lock_ref(match.handle)
        if req.last_handle is not None:
            self.dec_lock_ref(req.last_handle)
        req.prefix_indices = match.kv_indices
        req.last_handle = match.handle

    def _free_duplicates(self, req: CacheableReq, kv: torch.Tensor, cached: int) -> None:
        """Frees the slots the request computed for tokens the tree already held (beyond its own cached prefix)."""
        start = req.prefix_indices.numel()
        assert cached >= start, (
            f"request prefix of {start} tokens is no longer cached ({cached}); was its handle locked?"
        )
        if cached > start:
            self.allocator.free(kv[start:cached])

    # ---- maintenance ---------------------------------------------------------------------------------------------

    def reset(self) -> None:
        if self._protected:
            raise RuntimeError(
                f"reset() with {self._protected} locked cached tokens: release the requests first"
            )
        slots = self.cached_slots()
        self._init_tree()
        self.allocator.free(slots)

    def cached_slots(self) -> torch.Tensor:
        values = [n.value.cpu() for n in self._walk()]
        return torch.cat(values) if values else torch.empty(0, dtype=torch.int64)

    def check_invariant(self, extra_owned: int = 0) -> None:
        super().check_invariant(extra_owned)
        ps = self.page_size
        evictable = protected = count = 0
        for node in self._walk():
            count += 1
            assert node.parent is not None and len(node.key) > 0 and len(node.key) % ps == 0, "malformed node"
            assert node.value.numel() == len(node.key), "node key/value lengths differ"
            assert node.parent.children.get(self._child_key(node.key, 0)) is node, (
                "node filed under a wrong key"
            )
            assert node.lock_ref >= sum(c.lock_ref for c in node.children.values()), (
                "lock_ref below its children's"
            )
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
        assert (evictable, protected, count) == (self._evictable, self._protected, self._num_nodes), (
            f"incremental sizes drifted: walked {(evictable, protected, count)}, "
            f"kept {(self._evictable, self._protected, self._num_nodes)}"
        )
        slots = self.cached_slots()
        assert torch.unique(slots).numel() == slots.numel(), "a KV slot is cached twice"
        if slots.numel():
            assert not bool(self.allocator.free_slot_mask()[slots].any()), "a cached KV slot is also free"

    # ---- internals -----------------------------------------------------------------------------------------------

    def _child_key(self, tokens: list[int], pos: int) -> _ChildKey:
        return tokens[pos] if self.page_size == 1 else tuple(tokens[pos : pos + self.page_size])

    def _match_len(self, key: list[int], tokens: list[int], pos: int, end: int) -> int:
        """Common prefix length of ``key`` and ``tokens[pos:end]``, rounded down to whole pages."""
        n = min(len(key), end - pos)
        if key[:n] == tokens[pos : pos + n]:
            return n
        i = 0
        while key[i] == tokens[pos + i]:
            i += 1
        return i - i % self.page_size

    def _split(self, child: _Node, m: int) -> _Node:
        """Cuts ``child`` after ``m`` tokens; returns the new head. The tail keeps its identity, so handles held on
        it (and their locks) stay valid: the head inherits its lock_ref and sizes are unchanged."""
        parent = child.parent
        assert parent is not None and 0 < m < len(child.key)
        head = _Node(child.key[:m], child.value[:m], parent, child.last_access)
        head.lock_ref = child.lock_ref
        parent.children[self._child_key(child.key, 0)] = head
        child.key = child.key[m:]
        child.value = child.value[m:]
        child.parent = head
        head.children[self._child_key(child.key, 0)] = child
        self._num_nodes += 1
        return head

    def _touch(self, node: _Node) -> None:
        node.last_access = next(self._clock)
        self._push(node)

    def _push(self, node: _Node) -> None:
        """Offers ``node`` to the eviction heap if it is an evictable leaf now."""
        if not self._is_evictable_leaf(node):
            return
        heapq.heappush(self._heap, (node.last_access, next(self._seq), node))
        if len(self._heap) > 2 * self._num_nodes + 64:
            self._heap = [
                (n.last_access, next(self._seq), n) for n in self._walk() if self._is_evictable_leaf(n)
            ]
            heapq.heapify(self._heap)

    def _is_evictable_leaf(self, node: _Node) -> bool:
        return node.parent is not None and not node.children and node.lock_ref == 0

    def _live(self, handle: CacheHandle) -> _Node:
        if not isinstance(handle, _Node):
            raise TypeError(f"not a radix cache handle: {handle!r}")
        if handle is not self._root and handle.parent is None:
            raise RuntimeError(
                "cache handle refers to an evicted entry: lock a handle before the next eviction"
            )
        return handle

    def _walk(self) -> Iterator[_Node]:
        """Every node but the root, parents before children."""
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
