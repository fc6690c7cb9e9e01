"""Which data-parallel replica serves a request: round robin, shortest queue, or cache-aware (as sglang-router).

A policy sees a request's prompt ids and each replica's load (requests dispatched and not yet finished) and returns
a replica index. ``cache_aware`` keeps an approximate prefix tree per replica of the prompts it sent there: it never
asks a replica what it holds, so what it believes cached may since have been evicted; that only costs a prefill.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from sgl.core.registry import Registry


class LoadBalancer(ABC):
    def __init__(self, num_replicas: int) -> None:
        self.num_replicas = num_replicas

    @abstractmethod
    def pick(self, input_ids: Sequence[int], loads: Sequence[int]) -> int:
        """The replica for a request with this prompt, given each replica's outstanding requests."""


LOAD_BALANCERS: Registry[Callable[[int], LoadBalancer]] = Registry("load balance method")


@LOAD_BALANCERS.register("round_robin")
class RoundRobin(LoadBalancer):
    def __init__(self, num_replicas: int) -> None:
        super().__init__(num_replicas)
        self._next = 0

    def pick(self, input_ids: Sequence[int], loads: Sequence[int]) -> int:
        i = self._next
        self._next = (i + 1) % self.num_replicas
        return i


def least_loaded(loads: Sequence[int]) -> int:
    """The replica with the fewest outstanding requests (the lowest index on a tie)."""
    return min(range(len(loads)), key=lambda i: (loads[i], i))


@LOAD_BALANCERS.register("shortest_queue")
class ShortestQueue(LoadBalancer):
    def pick(self, input_ids: Sequence[int], loads: Sequence[int]) -> int:
        return least_loaded(loads)


class _Node:
    __slots__ = ("children", "last_use")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.last_use = 0


class ApproxPrefixTree:
    """A token trie of the prompts sent to one replica, bounded to ``max_tokens`` nodes by evicting the least
    recently used leaves (a replica's radix cache evicts the same way)."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.root = _Node()
        self.size = 0
        self._clock = 0

    def match(self, ids: Sequence[int]) -> int:
        node, n = self.root, 0
        for t in ids:
            nxt = node.children.get(t)
            if nxt is None:
                break
            node, n = nxt, n + 1
        return n

    def insert(self, ids: Sequence[int]) -> None:
        self._clock += 1
        node = self.root
        for t in ids:
            nxt = node.children.get(t)
            if nxt is None:
                nxt = node.children[t] = _Node()
                self.size += 1
            nxt.last_use = self._clock
            node = nxt
        if self.size > self.max_tokens:
            self._evict(self.size - self.max_tokens)

    def _evict(self, n: int) -> None:
        while n > 0:
            leaves: list[tuple[int, _Node, int]] = []  # (last_use, parent, token)
            stack = [self.root]
            while stack:
                node = stack.pop()
                for t, child in node.children.items():
                    if child.children:
                        stack.append(child)
                    else:
                        leaves.append((child.last_use, node, t))
            if not leaves:
                return
            oldest = min(leaf[0] for leaf in leaves)
            for use, parent, t in leaves:
                if use == oldest and n > 0:  # NOTE: only the oldest this round: a parent may be older than a leaf
                    del parent.children[t]
                    self.size -= 1
                    n -= 1


@LOAD_BALANCERS.register("cache_aware")
class CacheAware(LoadBalancer):
    """The replica whose tree matches most of the prompt, when the match covers ``cache_threshold`` of it; else the
    replica whose tree is smallest (the most room to cache). When loads are imbalanced (max - min above
    ``balance_abs_threshold`` and max above ``balance_rel_threshold`` x min), the least loaded replica instead.
    The defaults are sglang-router's."""

    def __init__(
        self, num_replicas: int, cache_threshold: float = 0.5, balance_abs_threshold: int = 32,
        balance_rel_threshold: float = 1.0001, max_tree_tokens: int = 1 << 20,
    ) -> None:
        super().__init__(num_replicas)
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.trees = [ApproxPrefixTree(max_tree_tokens) for _ in range(num_replicas)]

    def imbalanced(self, loads: Sequence[int]) -> bool:
        hi, lo = max(loads), min(loads)
        return hi - lo > self.balance_abs_threshold and hi > lo * self.balance_rel_threshold

    def pick(self, input_ids: Sequence[int], loads: Sequence[int]) -> int:
        if self.imbalanced(loads):
            choice = least_loaded(loads)
        else:
            matches = [tree.match(input_ids) for tree in self.trees]
            best = max(range(self.num_replicas), key=lambda i: (matches[i], -loads[i], -i))
            if input_ids and matches[best] / len(input_ids) > self.cache_threshold:
                choice = best
            else:
                choice = min(range(self.num_replicas), key=lambda i: (self.trees[i].size, loads[i], i))
        self.trees[choice].insert(input_ids)
        return choice


def make_load_balancer(method: str, num_replicas: int) -> LoadBalancer:
    return LOAD_BALANCERS.get(method)(num_replicas)
