"""Where ranks run: devices from --base-gpu-id/--gpu-id-step per replica and node, each replica its own TCP store,
and the parallelism flags' limits."""

from __future__ import annotations

import pytest

from sgl.core.config import ServerArgs
from sgl.core.distributed.topology import local_ranks, replica_addr


def test_replicas_take_consecutive_devices_from_the_base_with_the_step() -> None:
    args = ServerArgs(tp_size=2, dp_size=2, base_gpu_id=1, gpu_id_step=2)
    places = [p for r in range(2) for p in local_ranks(args, r, f"127.0.0.1:{5000 + r}")]
    assert [(p.replica, p.tp_rank, p.device_index) for p in places] == [(0, 0, 1), (0, 1, 3), (1, 0, 5), (1, 1, 7)]
    assert [p.name for p in places] == ["tp0", "tp1", "dp1 tp0", "dp1 tp1"]


def test_each_node_runs_its_share_of_the_ranks_at_one_store() -> None:
    args = ServerArgs(tp_size=4, nnodes=2, node_rank=1, dist_init_addr="10.0.0.1:6000")
    addr = replica_addr(args, 0)
    assert addr == "10.0.0.1:6000"
    assert [(p.tp_rank, p.device_index) for p in local_ranks(args, 0, addr)] == [(2, 0), (3, 1)]
    assert replica_addr(ServerArgs(tp_size=2, dp_size=2, nccl_port=7000), 1) == "127.0.0.1:7001"
    assert replica_addr(ServerArgs(), 0) == ""  # one rank: no group


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tp_size": 0}, "tp_size must be >= 1"),
    ({"dp_size": 0}, "dp_size must be >= 1"),
    ({"nnodes": 2, "node_rank": 2, "tp_size": 2, "dist_init_addr": "h:1"}, r"node_rank must be in \[0, nnodes=2\)"),
    ({"tp_size": 2, "nnodes": 2, "dist_init_addr": "nohost"}, "dist_init_addr must be host:port"),
    ({"tp_size": 2, "nnodes": 2, "dp_size": 2, "dist_init_addr": "h:1"}, "dp_size must be 1 with nnodes > 1"),
    ({"gpu_id_step": 0}, "gpu_id_step must be >= 1"),
    ({"load_balance_method": "random"}, "load_balance_method must be one of round_robin, shortest_queue, cache_aware"),
])
def test_parallel_flags_out_of_range_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerArgs(**kwargs)  # type: ignore[arg-type]
