"""Keeps tensor-parallel ranks on one schedule: rank 0 broadcasts what it received, every rank runs the same steps.

Each rank owns a full scheduler over identical pools (the smallest wins), so the same messages in the same order
give the same batches; only rank 0 talks to the API. With each iteration's messages rank 0 sends a fingerprint of
its scheduler's state, and a follower whose own differs stops with a clear error instead of entering a collective
its peers never join.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from sgl.core.distributed.communicator import ParallelState
from sgl.core.scheduler.scheduler import Scheduler

Recv = Callable[[bool, float], list[Any]]


class Fingerprint(NamedTuple):
    steps: int
    waiting: int
    running: int
    free_slots: int
    evictable: int


class RanksDiverged(RuntimeError):
    """A follower's schedule is no longer rank 0's (a nondeterministic feature decided differently on one rank)."""


def fingerprint(scheduler: Scheduler) -> Fingerprint:
    s = scheduler.state
    return Fingerprint(s.counters.steps, len(s.waiting), len(s.running), s.allocator.available_size(),
                       s.cache.evictable_size())


def leader_recv(recv: Recv, parallel: ParallelState, scheduler: Scheduler) -> Recv:
    """Rank 0: receive from the API as before, then hand the same messages to every follower."""

    def sync(block: bool, timeout: float) -> list[Any]:
        msgs = recv(block, timeout)
        parallel.control_comm.broadcast_object((msgs, fingerprint(scheduler)), src=0)
        return msgs

    return sync


def follower_recv(parallel: ParallelState, scheduler: Scheduler) -> Recv:
    """Ranks > 0: the messages rank 0 received this iteration (waits in the broadcast while rank 0 polls)."""

    def sync(block: bool, timeout: float) -> list[Any]:
        msgs, theirs = parallel.control_comm.broadcast_object(None, src=0)
        mine = fingerprint(scheduler)
        if mine != theirs:
            raise RanksDiverged(f"tensor-parallel rank {parallel.tp_rank} diverged from rank 0: {mine} vs {theirs}")
        return list(msgs)

    return sync
