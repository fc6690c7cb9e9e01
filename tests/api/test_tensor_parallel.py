"""`sgl serve --tp-size 2` over gloo: the same greedy tokens as one rank, every rank's slots freed on abort and
disconnect, and a rank that dies takes the server down with one line that names it.

The model has one KV head for two ranks (the head is replicated), 4 query heads (split), and a vocabulary split
over the ranks (embedding and LM head).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import sgl
from sgl.core.demo_model import write_demo_model
from tests.api.conftest import ServerProc, pool_is_whole, start_server

PROMPTS = ["The quick brown fox", "one two three four five six", "a"]
PARAMS = {"max_new_tokens": 12, "temperature": 0.0, "ignore_eos": True}
# NOTE: a constrained request too: every rank compiles its grammar at admission, so all agree on when it can run
CONSTRAINED = {"max_new_tokens": 12, "temperature": 0.0, "regex": "(yes|no|maybe)-[a-z]{2,6}"}


@pytest.fixture(scope="module")
def few_kv_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("tp") / "kv1", seed=3, num_layers=2, num_attention_heads=4,
                            num_key_value_heads=1, vocab_size=1024, max_position_embeddings=1024)


@pytest.fixture(scope="module")
def tp1_tokens(few_kv_heads: Path) -> list[list[int]]:
    """The oracle: the same model on one rank."""
    with sgl.Engine(model_path=str(few_kv_heads), max_total_tokens=2048, context_length=1024) as engine:
        plain = [r["output_ids"] for r in engine.generate(PROMPTS, PARAMS)]
        return [*plain, engine.generate(PROMPTS[0], CONSTRAINED)["output_ids"]]


@pytest.fixture(scope="module")
def tp2_server(few_kv_heads: Path) -> Iterator[ServerProc]:
    srv = start_server("--model-path", str(few_kv_heads), "--tp-size", "2")
    try:
        yield srv
    finally:
        srv.stop()


def test_tp2_server_gives_the_tp1_greedy_tokens(tp2_server: ServerProc, tp1_tokens: list[list[int]]) -> None:
    with tp2_server.client() as c:
        info = c.get("/get_server_info").json()
        assert info["tp_size"] == 2 and info["dp_size"] == 1 and len(info["scheduler_pids"]) == 2
        got = c.post("/generate", json={"text": PROMPTS + PROMPTS[:1],
                                        "sampling_params": [PARAMS] * len(PROMPTS) + [CONSTRAINED]}).json()
        assert [r["output_ids"] for r in got] == tp1_tokens
        assert got[-1]["text"].split("-")[0] in ("yes", "no", "maybe")
        # one at a time too: batch composition changes nothing
        single = c.post("/generate", json={"text": PROMPTS[1], "sampling_params": PARAMS}).json()
        assert single["output_ids"] == tp1_tokens[1]


def test_abort_and_disconnect_under_tp_free_every_ranks_slots(
    tp2_server: ServerProc, tp1_tokens: list[list[int]]
) -> None:
    """Rank 0's pool is whole again; the follower's is too, as it compares its free and cached slot counts with
    rank 0's every iteration and stops the server on a difference (so the request after proves it)."""
    long = {"max_new_tokens": 400, "temperature": 0.0, "ignore_eos": True}
    with tp2_server.client() as c:
        with c.stream("POST", "/generate", json={"text": "disconnect me", "sampling_params": long, "stream": True}) \
                as r:
            for _ in r.iter_lines():
                break  # the client goes away after the first chunk
        with httpx.Client(base_url=tp2_server.url, timeout=60) as other:
            done: dict[str, object] = {}
            t = threading.Thread(target=lambda: done.update(r=other.post("/generate", json={
                "text": "abort me", "sampling_params": long, "rid": "tp-abort"}).json()))
            t.start()
            time.sleep(0.5)
            assert c.post("/abort_request", json={"rid": "tp-abort"}).status_code == 200
            t.join(60)
        assert done["r"]["meta_info"]["finish_reason"]["type"] == "abort"  # type: ignore[index]
        info = pool_is_whole(c)
        assert info["available_tokens"] + info["evictable_tokens"] == info["max_total_tokens"]
        again = c.post("/generate", json={"text": PROMPTS[0], "sampling_params": PARAMS}).json()
        assert again["output_ids"] == tp1_tokens[0]


def test_a_dead_rank_takes_the_server_down_with_a_clear_line(tp2_server: ServerProc) -> None:
    follower = httpx.get(f"{tp2_server.url}/get_server_info").json()["scheduler_pids"][1]
    os.kill(follower, signal.SIGKILL)
    assert tp2_server.proc.wait(60) != 0
    log = tp2_server.log()
    assert f"tensor-parallel rank tp1 (pid {follower}) exited with code -9" in log, log
