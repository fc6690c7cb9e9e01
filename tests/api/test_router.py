"""sglang-router (the PyPI package, the Rust router SGLang users run) in front of two `sgl serve` workers: the openai
client's shared-prefix traffic all succeeds, the router's cache_aware policy keeps each prefix group on one worker
(read from each worker's own counters), and when that worker is killed mid-run the other serves the rest."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.api.conftest import ServerProc, free_port, start_server

SYSTEM = "You are a careful assistant who answers in one short sentence. " * 4


@pytest.fixture(scope="module")
def workers() -> Iterator[list[ServerProc]]:
    procs = [start_server(wait=False) for _ in range(2)]
    try:
        for p in procs:
            p.wait_healthy()
        yield procs
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def router(workers: list[ServerProc]) -> Iterator[str]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="sglang-router-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
             "--worker-urls", *[w.url for w in workers], "--policy", "cache_aware", "--log-level", "warn",
             "--health-check-interval-secs", "1", "--health-failure-threshold", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_marked_unhealthy(router: str, worker_url: str, timeout: float = 30.0) -> None:
    """Until the router's own health check (every second here) has marked ``worker_url`` unhealthy.

    NOTE: a request sent before that may be routed to the dead worker, and the router's retries (about 0.7 s of
    back-off) can end before its next health check: a 500 that says nothing about failover.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = httpx.get(f"{router}/workers", timeout=5).json()["workers"]
        if all(w["url"] != worker_url or not w["is_healthy"] for w in listed):
            return
        time.sleep(0.2)
    raise AssertionError(f"the router still calls {worker_url} healthy {timeout:.0f} s after it was killed")


def _prefills(workers: list[ServerProc]) -> list[int]:
    return [int(httpx.get(f"{w.url}/get_server_info").json()["prefill_reqs"]) for w in workers]


def test_router_keeps_prefix_groups_on_one_worker_and_survives_losing_it(
    workers: list[ServerProc], router: str
) -> None:
    client = openai.OpenAI(base_url=f"{router}/v1", api_key="none", max_retries=0)
    homes = {}
    for group in ("alpha", "beta"):
        before = _prefills(workers)
        for i in range(3):
            r = client.completions.create(model="m", prompt=f"{group}: {SYSTEM} Question {i}?", max_tokens=4)
            assert r.choices[0].finish_reason in ("stop", "length")
        grew = [a - b for a, b in zip(_prefills(workers), before)]
        assert sorted(grew) == [0, 3], (group, grew)  # every request of the group on one worker
        homes[group] = grew.index(3)
        info = httpx.get(f"{workers[homes[group]].url}/get_server_info").json()
        assert info["cached_tokens"] > 0  # the group's later requests reused its prefix there

    home = workers[homes["alpha"]]
    survivor = workers[1 - homes["alpha"]]
    before = _prefills([survivor])[0]

    def traffic(i: int) -> None:
        # NOTE: requests in flight at the kill may fail (the router does not replay a half-answered request)
        with contextlib.suppress(openai.APIError):
            client.completions.create(model="m", prompt=f"alpha: {SYSTEM} Later {i}?", max_tokens=4)

    inflight = [threading.Thread(target=traffic, args=(i,)) for i in range(3)]
    for t in inflight:
        t.start()
    os.killpg(home.proc.pid, signal.SIGKILL)
    for t in inflight:
        t.join(60)
    _wait_marked_unhealthy(router, home.url)
    for i in range(4):  # sent once the router's health check saw the kill: every one is served, by the survivor
        r = client.completions.create(model="m", prompt=f"alpha: {SYSTEM} After {i}?", max_tokens=4)
        assert r.choices[0].finish_reason in ("stop", "length")
    assert _prefills([survivor])[0] - before >= 4
