"""``--launch-server``: start ``sgl serve`` with the bench's server args, wait until it is healthy, stop it after.

The server runs as a child process with the same flags the user gave the bench, so a bench command line is also a
serve command line; it is always terminated (then killed) on the way out, whatever the bench did.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sgl.core.config import ServerArgs

HEALTH_POLL_S = 0.25


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_argv(args: ServerArgs) -> list[str]:
    """The ``sgl serve`` flags for every field that differs from its default (bools as bare flags)."""
    from sgl.plugin_args import plugin_argv

    argv: list[str] = plugin_argv(args.plugin_args)
    for f in dataclasses.fields(args):
        if f.metadata.get("cli") is False:
            continue
        value = getattr(args, f.name)
        if value == f.default or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def serve_command(args: ServerArgs) -> list[str]:
    return [sys.executable, "-m", "sgl.cli", "serve", *server_argv(args)]


def wait_healthy(base_url: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Polls GET /health until it answers 200; a child that exits first or a timeout is an error."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it became healthy")
        try:
            if httpx.get(base_url + "/health", timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(HEALTH_POLL_S)
    raise TimeoutError(f"the server at {base_url} was not healthy after {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def launched_process(
    args: ServerArgs, timeout: float = 300.0, command: Callable[[ServerArgs], list[str]] = serve_command
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yields the base URL and the process of a server started for ``args`` (port 0 picks a free one); ``command``
    makes the argv. The process is the API server's, whose children are its scheduler ranks."""
    if args.port == 0:
        args = args.replace(port=free_port(args.host))
    base_url = f"http://{args.host}:{args.port}"
    proc = subprocess.Popen(command(args))
    try:
        wait_healthy(base_url, proc, timeout)
        yield base_url, proc
    finally:
        stop(proc)


@contextmanager
def launched_server(
    args: ServerArgs, timeout: float = 300.0, command: Callable[[ServerArgs], list[str]] = serve_command
) -> Iterator[str]:
    """Yields the base URL of a server started for ``args``, as ``launched_process`` does."""
    with launched_process(args, timeout, command) as (base_url, _):
        yield base_url
