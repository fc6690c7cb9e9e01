"""The collective hook: tensor-parallel layers reduce and gather through a Communicator, never directly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


class Communicator:
    """Collectives over one process group; the base is torch.distributed (gloo on CPU)."""

    def __init__(self, group: Any = None) -> None:
        self.group = group

    @property
    def world_size(self) -> int:
        if not dist.is_available() or not dist.is_initialized():
            return 1
        return dist.get_world_size(self.group)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Concatenates every rank's ``x`` along ``dim``, in rank order."""
        n = self.world_size
        if n == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(n)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def all_to_all(self, x: torch.Tensor, send_counts: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Sends rows ``x[sum(send_counts[:r]) : ...]`` to rank r; returns the rows received (in rank order) and how
        many came from each rank. Expert parallel dispatches tokens to their experts' ranks and back with it."""
        n = self.world_size
        if n == 1:
            return x, list(send_counts)
        if len(send_counts) != n or sum(send_counts) != x.shape[0]:
            raise ValueError(f"send_counts {send_counts} do not split {x.shape[0]} rows over {n} ranks")
        counts = torch.tensor(send_counts, dtype=torch.int64)
        received = torch.empty_like(counts)
        if x.device.type != "cpu":
            counts, received = counts.to(x.device), received.to(x.device)
        dist.all_to_all_single(received, counts, group=self.group)
        recv_counts = [int(c) for c in received.tolist()]
        out = x.new_empty((sum(recv_counts), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), recv_counts, list(send_counts), group=self.group)
        return out, recv_counts

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``x`` as rank ``src`` holds it, on every rank (in place)."""
        if self.world_size == 1:
            return x
        dist.broadcast(x, src=src, group=self.group)
        return x

    def min_ints(self, values: list[int]) -> list[int]:
        """The element-wise minimum of ``values`` over the group (each rank's KV pool size: the smallest wins)."""
        if self.world_size == 1:
            return list(values)
        # NOTE: an object collective, so the same call works where the backend only moves device tensors (NCCL)
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, list(values), group=self.group)
        return [min(int(v[i]) for v in everyone) for i in range(len(values))]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]


class TorchCommunicator(Communicator):
    """The reference communicator, named for what it wraps."""


@dataclass(frozen=True)
class ParallelState:
    """This process's place in the tensor-parallel group.

    Expert parallel rides the TP group: with ``ep_size == tp_size`` each rank holds ``1/ep`` of every MoE layer's
    experts whole, instead of every expert's ``1/tp`` slice.
    """

    tp_rank: int = 0
    tp_size: int = 1
    comm: Communicator = Communicator()
    device_index: int | None = None  # this rank's device on its machine (default: its tp_rank)
    control: Communicator | None = None  # host-side (gloo) collectives over the same ranks, where comm's are not
    ep_size: int = 1  # expert parallel over the TP group: 1 or tp_size

    @property
    def device(self) -> int:
        return self.tp_rank if self.device_index is None else self.device_index

    @property
    def control_comm(self) -> Communicator:
        """For the scheduler's own messages (a step's inputs, pool sizes): host objects never touch the device."""
        return self.control if self.control is not None else self.comm

    def __post_init__(self) -> None:
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tp_rank {self.tp_rank} is outside [0, {self.tp_size})")
        if self.ep_size not in (1, self.tp_size):
            raise ValueError(f"ep_size {self.ep_size} must be 1 or the TP size {self.tp_size} "
                             "(expert parallel rides the TP group)")


SINGLE = ParallelState()
