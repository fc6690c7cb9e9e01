"""The parallelism flags' limits, checked once when ServerArgs is built (before any rank is placed)."""

from __future__ import annotations

from typing import Protocol


class ParallelFlags(Protocol):
    """The ServerArgs fields the checks read (a protocol, so this module needs nothing of the config's)."""

    tp_size: int
    dp_size: int
    ep_size: int
    nnodes: int
    node_rank: int
    dist_init_addr: str | None
    base_gpu_id: int
    gpu_id_step: int
    dist_timeout: int | None
    nccl_port: int | None


def _check(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ValueError(f"{name} {why}")


def split_host_port(addr: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) -> (host, port); ValueError naming the field otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"dist_init_addr must be host:port with a port in [1, 65535]; got {addr!r}")
    return host.strip("[]"), int(port)


def check_parallel_args(args: ParallelFlags) -> None:
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
