"""Two "nodes" on loopback: `sgl serve --tp-size 2 --nnodes 2` as two process trees, node 0 serving HTTP and rank 0,
node 1 running rank 1 only, meeting at node 0's torch.distributed TCP store. The demo model's greedy tokens are those
of one rank, and node 1 ends cleanly when node 0 shuts down."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import sgl
from tests.api.conftest import BASE_ARGS, free_port, start_server

PROMPTS = ["Hello world, the quick brown fox", "one two three"]
PARAMS = {"max_new_tokens": 10, "temperature": 0.0, "ignore_eos": True}


def test_tp2_over_two_nodes_gives_the_tp1_greedy_tokens() -> None:
    with sgl.Engine(max_total_tokens=8192, context_length=1024) as engine:
        expected = [r["output_ids"] for r in engine.generate(PROMPTS, PARAMS)]
    addr = f"127.0.0.1:{free_port()}"
    dist = ("--tp-size", "2", "--nnodes", "2", "--dist-init-addr", addr)
    log = Path(tempfile.mkstemp(prefix="sgl-node1-", suffix=".log")[1])
    with open(log, "wb") as out:
        node1 = subprocess.Popen(
            [sys.executable, "-m", "sgl.cli", "serve", *BASE_ARGS, *dist, "--node-rank", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True,
        )
    try:
        node0 = start_server(*dist, "--node-rank", "0")
        try:
            with node0.client() as c:
                assert c.get("/get_server_info").json()["tp_size"] == 2
                got = c.post("/generate", json={"text": PROMPTS, "sampling_params": PARAMS}).json()
            assert [r["output_ids"] for r in got] == expected
        finally:
            assert node0.stop() == 0
        assert node1.wait(60) == 0, log.read_text()
        assert "node 1: ranks ready" in log.read_text()
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait(10)
