"""The offline Engine under tensor parallelism: this process is rank 0, the follower ranks are child processes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sgl.core.config import ServerArgs
from sgl.core.distributed.communicator import SINGLE, ParallelState
from sgl.core.distributed.group import join_group, leave_group
from sgl.core.distributed.rank_process import RankHandle, spawn_rank, stop_ranks, wait_ranks_ready
from sgl.core.distributed.step_sync import leader_recv
from sgl.core.distributed.topology import local_ranks, replica_addr
from sgl.core.scheduler.scheduler import Scheduler

logger = logging.getLogger(__name__)

Recv = Callable[[bool, float], list[Any]]


class EngineGroup:
    """Rank 0's ParallelState and the follower processes it leads (none at tp_size 1)."""

    def __init__(self, parallel: ParallelState = SINGLE, followers: list[RankHandle] | None = None) -> None:
        self.parallel = parallel
        self.followers = followers or []

    def recv(self, recv: Recv, scheduler: Scheduler) -> Recv:
        """The scheduler loop's receive: as given, or broadcasting each iteration's messages to the followers."""
        return recv if self.parallel.tp_size == 1 else leader_recv(recv, self.parallel, scheduler)

    def wait_ready(self) -> None:
        """Raises SchedulerStartError naming a follower that failed to start."""
        if self.followers:
            wait_ranks_ready(self.followers)

    def close(self) -> None:
        """After the loop ended (its ShutdownReq reached the followers through the broadcast)."""
        if self.parallel.tp_size == 1:
            return
        leave_group()
        stop_ranks(self.followers)
        self.followers = []


def start_engine_group(args: ServerArgs) -> EngineGroup:
    if args.tp_size == 1:
        return EngineGroup()
    if args.dp_size > 1 or args.nnodes > 1:
        raise ValueError("sgl.Engine runs one replica on one machine: dp_size and nnodes must be 1 (serve with "
                         "`sgl serve --dp-size` or --nnodes instead)")
    from sgl.core.plugins import select_platform

    places = local_ranks(args, 0, replica_addr(args, 0))
    followers = [spawn_rank(args, p) for p in places[1:]]
    try:
        parallel = join_group(args, places[0], select_platform(args.backend))
    except BaseException:
        stop_ranks(followers)
        raise
    return EngineGroup(parallel, followers)
