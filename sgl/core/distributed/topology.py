"""Where each rank runs: how --tp-size, --dp-size, --nnodes and the device flags lay ranks over machines and devices.

A replica (``--dp-size`` of them) is one tensor-parallel group of ``tp_size`` ranks; with ``--nnodes N`` its ranks
are split evenly over N machines, node ``k`` holding ranks ``[k * tp/N, (k+1) * tp/N)``. Every replica is its own
torch.distributed world with its own TCP store, so replicas never wait on one another.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sgl.core.distributed.parallel_flags import split_host_port

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs


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
