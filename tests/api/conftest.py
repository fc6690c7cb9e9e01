"""A real `sgl serve` subprocess on 127.0.0.1 per test module, always cleaned up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key"
BASE_ARGS = ("--max-total-tokens", "8192", "--context-length", "1024", "--debug-invariants")
SHARED_ARGS = ("--api-key", API_KEY, "--max-n", "4", "--max-request-bytes", "65536",
               "--max-new-tokens-limit", "512", "--allowed-origins", "http://allowed.test")
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProc:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    api_key: str | None = None
    statuses_while_starting: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sgl serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status = httpx.get(f"{self.url}/health", timeout=2).status_code
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if status == 200:
                return
            self.statuses_while_starting.append(status)
            time.sleep(0.2)
        raise RuntimeError(f"sgl serve was not healthy within {START_TIMEOUT_S} s:\n{self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def start_server(*extra: str, api_key: str | None = None, wait: bool = True,
                 env: dict[str, str] | None = None) -> ServerProc:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="sgl-serve-", suffix=".log")[1])
    args = [sys.executable, "-m", "sgl.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *BASE_ARGS, *extra]
    if api_key:
        args += ["--api-key", api_key]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
    server = ServerProc(port, proc, log, api_key)
    if wait:
        try:
            server.wait_healthy()
        except BaseException:
            server.stop()
            raise
    return server


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProc]:
    """The shared server: API key, small --max-n / body cap / max_tokens cap, CORS for one origin."""
    srv = start_server(*SHARED_ARGS)
    srv.api_key = API_KEY
    try:
        yield srv
    finally:
        srv.stop()


def pool_is_whole(client: httpx.Client, timeout: float = 10.0) -> dict[str, object]:
    """Waits until the KV pool is whole again (available + evictable == total, nothing locked); returns the info."""
    deadline = time.monotonic() + timeout
    info: dict[str, object] = {}
    while time.monotonic() < deadline:
        info = client.get("/get_server_info").json()
        total = info["available_tokens"] + info["evictable_tokens"]  # type: ignore[operator]
        if total == info["max_total_tokens"] and info["locked_tokens"] == 0 and info["num_running_reqs"] == 0:
            return info
        time.sleep(0.1)
    raise AssertionError(f"the KV pool is not whole: {info}")
