"""Joins this process to its tensor-parallel group over torch.distributed (the platform's backend: gloo on CPU)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

import torch.distributed as dist

from sgl.core.distributed.communicator import ParallelState, TorchCommunicator
from sgl.core.distributed.topology import RankPlace

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.platform import Platform

logger = logging.getLogger(__name__)


def collective_timeout(args: ServerArgs) -> float:
    """Seconds a collective waits for its peers: --dist-timeout, else the scheduler watchdog's timeout."""
    return float(args.dist_timeout if args.dist_timeout is not None else args.watchdog_timeout)


def join_group(args: ServerArgs, place: RankPlace, platform: Platform) -> ParallelState:
    """Rendezvous through the replica's TCP store (rank 0 hosts it) and build this rank's ParallelState.

    NOTE: the device is set before the group forms, as NCCL-like backends bind a communicator to the current device.
    """
    platform.set_device(place.device_index)
    if place.tp_size == 1:
        return ParallelState(device_index=place.device_index)
    backend = platform.dist_backend
    logger.info("rank %s: joining a %s group of %d at tcp://%s", place.name, backend, place.tp_size, place.init_addr)
    dist.init_process_group(
        backend, init_method=f"tcp://{place.init_addr}", world_size=place.tp_size, rank=place.tp_rank,
        timeout=timedelta(seconds=collective_timeout(args)),
    )
    # NOTE: the scheduler's messages go over a gloo group of the same ranks, as SGLang's do: pickled objects stay
    # on the host instead of costing device copies and syncs every iteration
    control = None if backend == "gloo" else TorchCommunicator(dist.new_group(backend="gloo"))
    return ParallelState(place.tp_rank, place.tp_size, platform.communicator(None), place.device_index, control,
                         ep_size=args.ep_size)


def leave_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
