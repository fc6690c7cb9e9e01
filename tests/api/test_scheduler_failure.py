"""A scheduler that cannot start, or dies later, makes `sgl serve` exit non-zero; pending requests get 500."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sgl.api.scheduler_process import Watchdog
from tests.api.conftest import ServerProc, free_port, start_server


@pytest.fixture(scope="module")
def doomed_server() -> Iterator[ServerProc]:
    srv = start_server()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_bad_model_path_exits_non_zero_with_a_clear_message(tmp_path: Any) -> None:
    missing = tmp_path / "no-such-model"
    proc = subprocess.run(
        [sys.executable, "-m", "sgl.cli", "serve", "--port", str(free_port()), "--model-path", str(missing)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode != 0
    assert "scheduler failed to start" in proc.stderr and str(missing) in proc.stderr


def test_scheduler_death_fails_pending_requests_with_500_and_the_server_exits(doomed_server: ServerProc) -> None:
    srv = doomed_server
    pid = httpx.get(f"{srv.url}/get_server_info").json()["scheduler_pid"]
    result: dict[str, httpx.Response] = {}

    def pending() -> None:
        result["r"] = httpx.post(f"{srv.url}/generate", timeout=60, json={
            "text": "doomed", "sampling_params": {"max_new_tokens": 900, "ignore_eos": True}})

    t = threading.Thread(target=pending)
    t.start()
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    assert result["r"].status_code == 500
    assert "scheduler" in result["r"].json()["error"]["message"]
    assert srv.proc.wait(30) != 0


def test_watchdog_fires_only_when_busy_without_progress() -> None:
    fired: list[float] = []
    busy = {"on": False}
    dog = Watchdog(0.2, lambda: busy["on"], fired.append, poll=0.02).start()
    time.sleep(0.4)
    assert fired == []  # idle time is never a stall
    busy["on"] = True
    for _ in range(10):
        dog.beat()
        time.sleep(0.05)
    assert fired == []  # busy but progressing
    time.sleep(0.5)
    assert len(fired) == 1 and fired[0] >= 0.2
    dog.stop()
