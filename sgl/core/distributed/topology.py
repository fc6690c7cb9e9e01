"""Where each rank runs: how --tp-size, --dp-size, --nnodes and the device flags lay ranks over machines and devices.

A replica (``--dp-size`` of them) is one tensor-parallel group of ``tp_size`` ranks; with ``--nnodes N`` its ranks
are split evenly over N machines, node ``k`` holding ranks ``[k * tp/N, (k+1) * tp/N)``. Every replica is its own
torch.distributed world with its own TCP store, so replicas never wait on one another.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs


def _check(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ValueError(f"{name} {why}")


def split_host_port(addr: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) -> (host, port); ValueError naming the field otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"dist_init_addr must be host:port with a port in [1, 65535]; got {addr!r}")
    return host.strip("[]"), int(port)


def check_parallel_args(args: ServerArgs) -> None:
    """The parallelism flags' limits, checked once when ServerArgs is built."""
    _check(args.tp_size >= 1, "tp_size", "must be >= 1")
    _check(args.dp_size >= 1, "dp_size", "must be >= 1")
    _check(args.ep_size in (1, args.tp_size), "ep_size", f"must be 1 or tp_size ({args.tp_size}): expert parallel "
           "rides the tensor-parallel group")
    _check(args.nnodes >= 1, "nnodes", "must be >= 1")
    _check(0 <= args.node_rank < args.nnodes, "node_rank", f"must be in [0, nnodes={args.nnodes})")
    _check(args.tp_size % args.nnodes == 0, "tp_size", f"({args.tp_size}) must be a multiple of nnodes "
           f"({args.nnodes}): every node runs the same number of ranks")
    _check(args.nnodes == 1 or args.dist_init_addr is not None, "dist_init_addr",
           "is needed with nnodes > 1 (host:port of node 0, reachable from every node)")
    _check(args.nnodes == 1 or args.dp_size == 1, "dp_size",
           "must be 1 with nnodes > 1: run one server per machine behind sglang-router instead")
    _check(args.base_gpu_id >= 0, "base_gpu_id", "must be >= 0")
    _check(args.gpu_id_step >= 1, "gpu_id_step", "must be >= 1")
    _check(args.dist_timeout is None or args.dist_timeout > 0, "dist_timeout", "must be > 0")
    _check(args.nccl_port is None or 1 <= args.nccl_port <= 65535 - args.dp_size, "nccl_port",
           "must leave one port per replica in [1, 65535]")
    if args.dist_init_addr is not None:
        split_host_port(args.dist_init_addr)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RankPlace:
    """One rank of one replica: its rank in the group, its device index on its machine, its group's store."""

    replica: int
    tp_rank: int
    tp_size: int
    device_index: int
    init_addr: str  # host:port of the replica's TCP store ("" when tp_size == 1: no group is formed)

    @property
    def name(self) -> str:
        dp = f"dp{self.replica} " if self.replica else ""
        return f"{dp}tp{self.tp_rank}"


def ranks_per_node(args: ServerArgs) -> int:
    return args.tp_size // args.nnodes


def replica_addr(args: ServerArgs, replica: int) -> str:
    """The TCP store of ``replica``'s group: --dist-init-addr, else 127.0.0.1 on --nccl-port (+ replica) or a free
    port. NOTE: chosen once by the launching process and passed to every rank, never recomputed in a rank."""
    if args.tp_size == 1:
        return ""
    if args.dist_init_addr is not None:
        host, port = split_host_port(args.dist_init_addr)
        return f"{host}:{port + replica}"
    port = args.nccl_port + replica if args.nccl_port is not None else free_port()
    return f"127.0.0.1:{port}"


def local_ranks(args: ServerArgs, replica: int, addr: str) -> list[RankPlace]:
    """The ranks of ``replica`` that run on this node (--node-rank), with their devices."""
    per_node = ranks_per_node(args)
    first = args.node_rank * per_node
    places = []
    for local in range(per_node):
        slot = replica * per_node + local  # NOTE: replicas on one machine take consecutive devices
        places.append(RankPlace(replica, first + local, args.tp_size,
                                args.base_gpu_id + slot * args.gpu_id_step, addr))
    return places
