"""`sgl serve --dp-size 2 --load-balance-method cache_aware`: a mixed workload (completions, chat, streaming, n > 1,
an abort) is answered once per request, a shared-prefix group lands on one replica, and the merged server info
reports both replicas."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.api.conftest import ServerProc, pool_is_whole, start_server

SYSTEM = "You are a careful assistant who answers in one short sentence. " * 4


@pytest.fixture(scope="module")
def dp2_server() -> Iterator[ServerProc]:
    srv = start_server("--dp-size", "2", "--load-balance-method", "cache_aware")
    try:
        yield srv
    finally:
        srv.stop()


def _replicas(srv: ServerProc) -> list[dict[str, Any]]:
    with srv.client() as c:
        info = c.get("/get_server_info").json()
    assert info["dp_size"] == 2 and len(info["internal_states"]) == 2
    return list(info["internal_states"])


def test_a_shared_prefix_group_lands_on_one_replica(dp2_server: ServerProc) -> None:
    client = openai.OpenAI(base_url=f"{dp2_server.url}/v1", api_key="none")
    before = [r["prefill_reqs"] for r in _replicas(dp2_server)]
    for i in range(4):
        client.completions.create(model="m", prompt=SYSTEM + f"Question {i}?", max_tokens=4, temperature=0)
    grew = [r["prefill_reqs"] - b for r, b in zip(_replicas(dp2_server), before)]
    assert sorted(grew) == [0, 4], grew
    home = grew.index(4)
    cached = _replicas(dp2_server)[home]["cached_tokens"]
    assert cached >= 3 * len(SYSTEM) // 8  # the later three reused the first one's prefix


def test_a_mixed_workload_is_answered_once_per_request(dp2_server: ServerProc) -> None:
    client = openai.OpenAI(base_url=f"{dp2_server.url}/v1", api_key="none", max_retries=0)
    results: dict[str, list[str]] = {}
    lock = threading.Lock()

    def record(name: str, finishes: list[str]) -> None:
        with lock:
            assert name not in results
            results[name] = finishes

    def completion(i: int) -> None:
        r = client.completions.create(model="m", prompt=f"prompt number {i} " * (1 + i % 5), max_tokens=6)
        record(f"c{i}", [c.finish_reason for c in r.choices])

    def chat(i: int) -> None:
        r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=5)
        record(f"chat{i}", [c.finish_reason for c in r.choices])

    def stream(i: int) -> None:
        chunks = client.completions.create(model="m", prompt=f"stream {i}", max_tokens=6, stream=True)
        record(f"s{i}", [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason])

    def siblings(i: int) -> None:
        r = client.completions.create(model="m", prompt=f"two of {i}", max_tokens=5, n=2)
        record(f"n{i}", [c.finish_reason for c in r.choices])

    def aborted(i: int) -> None:
        with dp2_server.client() as c:
            r = c.post("/generate", json={"text": f"abort {i}", "rid": f"dp-abort-{i}",
                                          "sampling_params": {"max_new_tokens": 900, "ignore_eos": True}})
        record(f"a{i}", [r.json()["meta_info"]["finish_reason"]["type"]])

    jobs = [(f, i) for i in range(3) for f in (completion, chat, stream, siblings)] + [(aborted, 0)]
    threads = [threading.Thread(target=f, args=(i,)) for f, i in jobs]
    for t in threads:
        t.start()
    time.sleep(1.5)
    with dp2_server.client() as c:
        assert c.post("/abort_request", json={"rid": "dp-abort-0"}).status_code == 200
    for t in threads:
        t.join(120)
    assert len(results) == len(jobs)
    for name, finishes in results.items():
        assert len(finishes) == (2 if name.startswith("n") else 1), (name, finishes)
        assert all(f in (("abort",) if name.startswith("a") else ("stop", "length")) for f in finishes), \
            (name, finishes)
    replicas = _replicas(dp2_server)
    assert all(r["prefill_reqs"] > 0 for r in replicas)  # both replicas served
    with dp2_server.client() as c:
        info = pool_is_whole(c)
        assert info["max_total_tokens"] == sum(r["max_total_tokens"] for r in replicas)
        assert c.post("/flush_cache").json()["success"]
