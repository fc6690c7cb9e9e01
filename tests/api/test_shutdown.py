"""SIGTERM drains: new requests get 503, short ones finish, the rest are aborted, no child is left behind."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import ServerProc, start_server


@pytest.fixture(scope="module")
def draining_server() -> Iterator[ServerProc]:
    # NOTE: a short drain and a long request (4,000 tokens: seconds even at the demo model's fastest), so the long
    # one is still running when the drain ends, however fast this machine is
    srv = start_server("--shutdown-timeout", "1.5", "--context-length", "4096")
    try:
        yield srv
    finally:
        srv.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stream(url: str, max_tokens: int, out: dict[str, Any], started: threading.Event) -> None:
    events: list[Any] = []
    body = {"model": "m", "prompt": "drain", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
                started.set()
    out["events"] = events


def test_sigterm_drains_short_requests_aborts_long_ones_and_exits_cleanly(draining_server: ServerProc) -> None:
    srv = draining_server
    assert all(s == 503 for s in srv.statuses_while_starting)  # while loading, the port answered only 503
    scheduler_pid = httpx.get(f"{srv.url}/get_server_info").json()["scheduler_pid"]
    short: dict[str, Any] = {}
    long: dict[str, Any] = {}
    s1, s2 = threading.Event(), threading.Event()
    threads = [threading.Thread(target=_stream, args=(srv.url, 4000, long, s1)),
               threading.Thread(target=_stream, args=(srv.url, 10, short, s2))]
    for t in threads:
        t.start()
    assert s1.wait(30) and s2.wait(30)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert httpx.get(f"{srv.url}/health").status_code == 503
    refused = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "late", "max_tokens": 2})
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"
    for t in threads:
        t.join(30)
    finishes = [c["choices"][0]["finish_reason"] for c in short["events"][:-1] if c.get("choices")]
    assert finishes[-1] == "length" and short["events"][-1] == "[DONE]"
    assert "error" in long["events"][-2] and long["events"][-1] == "[DONE]"
    assert long["events"][-2]["error"]["message"].startswith("the server is shutting down")
    assert srv.proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while _alive(scheduler_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(scheduler_pid)
    log = srv.log()
    for event in ("starting", "scheduler ready", "listening on http://127.0.0.1", "draining", "stopped"):
        assert event in log
