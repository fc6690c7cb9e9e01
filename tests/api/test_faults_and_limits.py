"""Faults and limits on a real server: a forward that raises fails its batch (500) and the server goes on; a forward
that hangs past --watchdog-timeout ends the server non-zero naming the stuck step; a full queue is a 503 with
Retry-After. Faults come from the documented test seam SGL_FAULT_INJECT (sgl/core/faults.py)."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ServerProc, pool_is_whole, start_server


def _arm_path() -> Path:
    return Path(tempfile.mkdtemp(prefix="sgl-fault-")) / "arm"


@pytest.fixture(scope="module")
def faulty() -> Iterator[tuple[ServerProc, Path]]:
    """One request slot, one queue place, and a forward that raises once each time the arm file appears."""
    arm = _arm_path()
    srv = start_server("--max-running-requests", "1", "--max-queued-requests", "1",
                       env={"SGL_FAULT_INJECT": "raise@forward", "SGL_FAULT_INJECT_ARM": str(arm)})
    try:
        yield srv, arm
    finally:
        srv.stop()


def _generate(c: httpx.Client, text: str, n: int) -> httpx.Response:
    return c.post("/generate", json={"text": text, "sampling_params": {"max_new_tokens": n, "ignore_eos": True}})


def test_a_forward_that_raises_fails_its_batch_with_500_and_the_next_requests_are_served(
    faulty: tuple[ServerProc, Path],
) -> None:
    srv, arm = faulty
    with srv.client() as c:
        assert _generate(c, "before", 4).status_code == 200
        arm.touch()
        failed = c.post("/v1/completions", json={"model": "m", "prompt": "doomed", "max_tokens": 8})
        assert not arm.exists(), "the fault did not fire"
        assert failed.status_code == 500
        assert "InjectedFault: injected fault in forward" in failed.json()["error"]["message"]
        pool_is_whole(c)  # NOTE: the server runs with --debug-invariants: every step checked the ledger too
        for i in range(3):
            ok = _generate(c, f"after {i}", 6)
            assert ok.status_code == 200 and len(ok.json()["output_ids"]) == 6
        assert srv.proc.poll() is None


def test_a_fault_mid_decode_frees_the_requests_kv_and_the_next_request_is_served(
    faulty: tuple[ServerProc, Path],
) -> None:
    _fault_mid_decode(*faulty)


def test_with_the_overlap_scheduler_a_fault_fails_the_chained_steps_and_the_server_goes_on() -> None:
    arm = _arm_path()
    srv = start_server("--force-overlap-schedule", env={"SGL_FAULT_INJECT": "raise@forward",
                                                        "SGL_FAULT_INJECT_ARM": str(arm)})
    try:
        assert "overlap schedule on" in srv.log()
        _fault_mid_decode(srv, arm)
        with srv.client() as c:  # several decoding requests, one fault: all of that step fail, the next are served
            results: list[httpx.Response] = []
            threads = [threading.Thread(target=lambda i=i: results.append(_generate(srv.client(), f"o{i}", 1000)))
                       for i in range(3)]
            for t in threads:
                t.start()
            _wait_running(c, 3)  # NOTE: armed once all three decode, however fast this machine is
            arm.touch()
            for t in threads:
                t.join(120)
            assert not arm.exists()
            assert {r.status_code for r in results} <= {200, 500} and len(results) == 3
            pool_is_whole(c)
            assert _generate(c, "after overlap fault", 5).status_code == 200
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def _wait_running(c: httpx.Client, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while c.get("/get_server_info").json().get("num_running_reqs", 0) < n:
        assert time.monotonic() < deadline, f"{n} requests never ran together"
        time.sleep(0.02)


def _fault_mid_decode(srv: ServerProc, arm: Path) -> None:
    with srv.client() as c, c.stream("POST", "/generate", json={
        "text": "decoding", "stream": True, "sampling_params": {"max_new_tokens": 400, "ignore_eos": True},
    }) as resp:
        lines = resp.iter_lines()
        for line in lines:  # decoding has begun once a token has streamed
            if line.startswith("data: ") and json.loads(line[6:])["output_ids"]:
                break
        arm.touch()
        rest = "\n".join(lines)
    assert "injected fault in forward" in rest
    with srv.client() as c:
        pool_is_whole(c)
        assert _generate(c, "after decode fault", 5).status_code == 200


def test_more_than_max_queued_requests_waiting_is_a_503_with_retry_after(faulty: tuple[ServerProc, Path]) -> None:
    srv, _ = faulty
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with srv.client() as c:
            r = _generate(c, f"queue {i}", 120)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(120)
    codes = sorted(r.status_code for r in results)
    assert len(codes) == 6 and set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 2  # one running, one queued
    refused = [r for r in results if r.status_code == 503]
    assert refused, "six long requests against one running slot and one queue place: some must be refused"
    for r in refused:
        assert r.headers["retry-after"] == "1"
        assert "--max-queued-requests 1" in r.json()["error"]["message"]
    with srv.client() as c:
        pool_is_whole(c)


def test_a_forward_hung_past_the_watchdog_timeout_ends_the_server_naming_the_step() -> None:
    arm = _arm_path()
    srv = start_server("--watchdog-timeout", "1", env={"SGL_FAULT_INJECT": "sleep=60@forward",
                                                        "SGL_FAULT_INJECT_ARM": str(arm)})
    try:
        arm.touch()
        t0 = time.monotonic()
        with srv.client() as c:
            resp = _generate(c, "hang", 4)
        assert resp.status_code == 500  # the scheduler died: pending requests fail, none hangs
        code = srv.proc.wait(30)
        assert code != 0 and time.monotonic() - t0 < 30
        log = srv.log()
        assert "past --watchdog-timeout; stuck step: inside the extend forward of 1 request(s)" in log, log[-2000:]
    finally:
        srv.stop()
