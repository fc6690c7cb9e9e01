"""The data-parallel dispatcher's policies: round robin cycles, shortest queue takes the least loaded replica,
cache-aware keeps a shared prefix on one replica unless the loads are imbalanced, and spreads new prefixes."""

from __future__ import annotations

import pytest

from sgl.core.distributed.load_balance import ApproxPrefixTree, CacheAware, make_load_balancer


def test_round_robin_cycles_over_the_replicas() -> None:
    rr = make_load_balancer("round_robin", 3)
    assert [rr.pick([1], [9, 0, 0]) for _ in range(5)] == [0, 1, 2, 0, 1]


def test_shortest_queue_picks_the_least_loaded_replica_lowest_index_on_ties() -> None:
    sq = make_load_balancer("shortest_queue", 3)
    assert sq.pick([1], [3, 1, 2]) == 1
    assert sq.pick([1], [2, 5, 2]) == 0


def test_an_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(Exception, match="cache_aware.*round_robin.*shortest_queue|round_robin"):
        make_load_balancer("random", 2)


def test_cache_aware_keeps_a_shared_prefix_on_one_replica_and_spreads_new_ones() -> None:
    ca = CacheAware(2)
    system_a, system_b = list(range(100, 140)), list(range(200, 240))
    first = ca.pick(system_a + [1, 2], [0, 0])
    # the other replica's tree is empty, so a new prefix goes there (most room to cache)
    other = ca.pick(system_b + [3], [1, 0])
    assert other != first
    # the same prefix follows its replica, even when that replica is a little busier
    assert [ca.pick(system_a + [i], [3, 1] if first == 0 else [1, 3]) for i in range(5)] == [first] * 5
    assert ca.pick(system_b + [9, 9], [2, 2]) == other


def test_cache_aware_falls_back_to_the_least_loaded_when_loads_are_imbalanced() -> None:
    ca = CacheAware(2, balance_abs_threshold=4)
    prompt = list(range(50))
    assert ca.pick(prompt, [0, 0]) == 0
    assert ca.pick(prompt, [3, 0]) == 0  # imbalance of 3 is under the threshold: the cache wins
    assert ca.pick(prompt, [10, 1]) == 1  # over it: the least loaded wins


def test_the_approximate_tree_evicts_least_recently_used_leaves_within_its_bound() -> None:
    tree = ApproxPrefixTree(max_tokens=10)
    tree.insert([1, 2, 3, 4, 5, 6])
    tree.insert([7, 8, 9, 10, 11, 12])  # 12 nodes: the oldest branch loses its tail
    assert tree.size == 10
    assert tree.match([7, 8, 9, 10, 11, 12]) == 6
    assert tree.match([1, 2, 3, 4, 5, 6]) == 4
