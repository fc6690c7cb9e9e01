"""sgl.Engine(tp_size=2): this process is rank 0 and one follower process joins it over gloo; the demo model's greedy
tokens are those of one rank, and shutting down leaves no group and no follower behind."""

from __future__ import annotations

import torch.distributed as dist

import sgl

PROMPTS = ["Hello world, the quick brown fox", "one two three"]
PARAMS = {"max_new_tokens": 10, "temperature": 0.0, "ignore_eos": True}
ARGS = {"max_total_tokens": 2048, "context_length": 512, "debug_invariants": True}


def test_engine_tp2_gives_the_tp1_greedy_tokens() -> None:
    with sgl.Engine(**ARGS) as one:
        expected = [r["output_ids"] for r in one.generate(PROMPTS, PARAMS)]
    engine = sgl.Engine(tp_size=2, **ARGS)
    try:
        assert engine.get_server_info()["tp_size"] == 2
        assert [r["output_ids"] for r in engine.generate(PROMPTS, PARAMS)] == expected
        followers = [f.process for f in engine._group.followers]
    finally:
        engine.shutdown()
    assert not dist.is_initialized()
    assert all(not p.is_alive() and p.exitcode == 0 for p in followers)
