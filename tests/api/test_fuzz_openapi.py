"""Every request answered: schemathesis fuzzes a real server from its own /openapi.json, two requests at a time, for
a bounded time; any 5xx or any request without an answer within REQUEST_TIMEOUT_S fails the test, and so does a
server that is not healthy afterwards (unresponsive, KV slots still held, a generation refused)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ServerProc, pool_is_whole, start_server

FUZZ_TIME_S = 75  # NOTE: with the server's start, about two minutes of wall time on two cores
REQUEST_TIMEOUT_S = 30
WORKERS = 2


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProc]:
    srv = start_server("--max-n", "4", "--max-new-tokens-limit", "256")
    try:
        yield srv
    finally:
        srv.stop()


def _schemathesis() -> list[str]:
    exe = Path(sys.executable).parent / "schemathesis"
    return [str(exe)] if exe.exists() else [shutil.which("schemathesis") or "schemathesis"]


def test_fuzzing_the_openapi_document_finds_no_5xx_no_timeout_and_leaves_the_server_healthy(
    server: ServerProc, tmp_path: Path,
) -> None:
    cmd = [*_schemathesis(), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
           "--workers", str(WORKERS), "--max-time", str(FUZZ_TIME_S), "--request-timeout", str(REQUEST_TIMEOUT_S),
           "--phases", "examples,coverage,fuzzing", "--no-color"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=FUZZ_TIME_S + 120, check=False)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, f"schemathesis found failures:\n{report}\n--- server log ---\n{server.log()[-3000:]}"
    assert "generated" in run.stdout, report  # it really ran cases
    assert server.proc.poll() is None, "the server died under fuzzing"
    with server.client() as c:
        assert c.get("/health").status_code == 200
        info = pool_is_whole(c, timeout=REQUEST_TIMEOUT_S)
        assert info["locked_tokens"] == 0
        done = c.post("/v1/completions", json={"model": "m", "prompt": "still alive", "max_tokens": 4})
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] >= 1
    assert httpx.get(f"{server.url}/health_generate", timeout=30).status_code == 200
