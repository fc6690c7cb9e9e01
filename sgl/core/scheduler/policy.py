"""Waiting-queue order: lpm (longest prefix match), dfs-weight (requests sharing a cached node together), fcfs."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from sgl.core.scheduler.req import Req

logger = logging.getLogger(__name__)

# NOTE: matching every waiting request each step costs O(queue * prompt); past this length order falls back to fcfs.
MAX_QUEUE_FOR_PREFIX_POLICY = 128

MatchLen = Callable[[Req], tuple[int, object]]


def order_waiting(waiting: list[Req], policy: str, match: MatchLen) -> list[Req]:
    """Returns the waiting requests in the order the prefill adder should consider them."""
    if policy == "fcfs" or len(waiting) <= 1 or len(waiting) > MAX_QUEUE_FOR_PREFIX_POLICY:
        return sorted(waiting, key=lambda r: r.arrival)
    matched = {id(r): match(r) for r in waiting}
    if policy == "lpm":
        return sorted(waiting, key=lambda r: (-matched[id(r)][0], r.arrival))
    if policy == "dfs-weight":
        groups: dict[object, list[Req]] = defaultdict(list)
        for r in waiting:
            handle = matched[id(r)][1]
            groups[handle if getattr(handle, "__hash__", None) else id(handle)].append(r)
        ordered = sorted(groups.values(), key=lambda g: (-len(g), -matched[id(g[0])][0], g[0].arrival))
        return [r for g in ordered for r in sorted(g, key=lambda r: r.arrival)]
    raise ValueError(f"unknown schedule policy {policy!r}")
