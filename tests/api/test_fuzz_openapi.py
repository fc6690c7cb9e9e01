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
    # NOTE: a small --max-new-tokens-limit keeps each generation short, and the document says so (max_tokens <= 32)
    srv = start_server("--max-n", "4", "--max-new-tokens-limit", "32")
    try:
        yield srv
    finally:
        srv.stop()


def _schemathesis() -> list[str]:
    exe = Path(sys.executable).parent / "schemathesis"
    return [str(exe)] if exe.exists() else [shutil.which("schemathesis") or "schemathesis"]


def test_the_openapi_document_states_this_servers_bounds_errors_and_routes(server: ServerProc) -> None:
    doc = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    assert "/load_lora_adapter" not in paths  # LoRA is off: the route only answers 400 here
    tokens = schemas["DetokenizeRequest"]["properties"]["tokens"]["items"]
    top = int(tokens["maximum"])
    assert tokens["minimum"] == 0
    with server.client() as c:  # the bound is the server's own: the largest id is accepted, the next refused
        assert c.post("/detokenize", json={"tokens": [top]}).status_code == 200
        assert c.post("/detokenize", json={"tokens": [top + 1]}).status_code == 400
    assert schemas["CompletionRequest"]["properties"]["max_tokens"]["maximum"] == 32
    assert schemas["CompletionRequest"]["properties"]["n"]["maximum"] == 4
    assert len(schemas["GenerateRequest"]["oneOf"]) == 2  # exactly one of text and input_ids
    for path, ops in paths.items():
        for method, op in ops.items():
            assert "422" not in op["responses"] and {"400", "413", "500", "503"} <= set(op["responses"]), (path,
                                                                                                            method)
    assert "400" in paths["/flush_cache"]["get"]["responses"]  # busy: SGLang's answer, documented
    assert "application/json" not in paths["/health"]["get"]["responses"]["200"].get("content", {})
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    trace = httpx.request("TRACE", f"{server.url}/health", timeout=30)
    assert trace.status_code == 405 and "GET" in trace.headers["allow"]


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
