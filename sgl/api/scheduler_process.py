"""The scheduler in its own process, joined to the API process by a pipe that carries the ipc dataclasses (pickle).

The child builds the runtime, answers SchedulerReady(info) or SchedulerFailed(message), then runs the scheduler loop
until a ShutdownReq arrives or the pipe closes (the API process died). A watchdog thread ends the child with a non-zero
code when one step of a busy scheduler runs past --watchdog-timeout, logging the stuck step (the forward it was in),
so a hung device or collective never looks like a slow server.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sgl.core.config import ServerArgs
from sgl.core.ipc import SchedulerFailed, SchedulerReady, ShutdownReq

logger = logging.getLogger(__name__)

STARTUP_FAILED_EXIT = 1
WATCHDOG_EXIT = 3


class SchedulerStartError(RuntimeError):
    """The scheduler process could not start; the message says why (it is shown to the user as is)."""


class Watchdog:
    """Calls ``on_stall`` once when ``busy()`` has been true for ``timeout`` seconds without a ``beat()``."""

    def __init__(
        self, timeout: float, busy: Callable[[], bool], on_stall: Callable[[float], None], poll: float | None = None
    ) -> None:
        self.timeout = timeout
        self._busy = busy
        self._on_stall = on_stall
        self._poll = poll if poll is not None else min(1.0, max(timeout / 4, 0.01))
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sgl-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def beat(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            if not self._busy():
                self._last = time.monotonic()  # NOTE: idle time never counts as a stall
                continue
            stalled = time.monotonic() - self._last
            if stalled >= self.timeout:
                self._on_stall(stalled)
                return


def _exit_on_stall(stalled: float, stuck_step: str) -> None:
    logger.error("watchdog: one scheduler step ran %.1f s, past --watchdog-timeout; stuck step: %s; exiting",
                 stalled, stuck_step)
    logging.shutdown()
    os._exit(WATCHDOG_EXIT)


def _child_main(args: ServerArgs, conn: Connection, log_level: str) -> None:
    """Entry point of the scheduler process (spawned: it imports torch afresh, never inherits the API's state)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # NOTE: Ctrl-C reaches the whole group; the API process decides
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s [scheduler] %(levelname)s %(message)s")
    send_lock = threading.Lock()

    def send(msg: Any) -> None:
        with send_lock:
            try:
                conn.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                pass  # the API process is gone; the loop ends at the next recv

    try:
        from sgl.core.runtime import build_runtime

        runtime = build_runtime(args)
        info = {**runtime.model_info(), **runtime.scheduler.info(), "scheduler_pid": os.getpid()}
    except Exception as exc:  # noqa: BLE001 - every start-up failure becomes one clear message for the API process
        logger.debug("start-up failed:\n%s", traceback.format_exc())
        send(SchedulerFailed(f"{type(exc).__name__}: {exc}"))
        conn.close()
        raise SystemExit(STARTUP_FAILED_EXIT) from None
    send(SchedulerReady(info))

    from sgl.core.scheduler.loop import run_scheduler_loop

    scheduler = runtime.scheduler
    runner = scheduler.runner
    watchdog = Watchdog(args.watchdog_timeout, lambda: scheduler.is_busy,
                        lambda stalled: _exit_on_stall(stalled, runner.describe_step())).start()

    def recv(block: bool, timeout: float) -> list[Any]:
        msgs: list[Any] = []
        try:
            if conn.poll(timeout if block else 0):
                msgs.append(conn.recv())
                while conn.poll(0):
                    msgs.append(conn.recv())
        except (EOFError, OSError):
            msgs.append(ShutdownReq())  # the API process is gone: stop instead of serving no one
        return msgs

    stats_log = runtime.stats_log()

    def on_progress() -> None:
        watchdog.beat()
        stats_log.tick()

    run_scheduler_loop(scheduler, recv, send, on_progress=on_progress)
    watchdog.stop()
    conn.close()


class SchedulerProcess:
    """The API side's handle on the child: its connection and process. Reading is the TokenizerManager's job."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self._send_lock = threading.Lock()  # NOTE: one writer at a time, or pickled frames interleave

    def send(self, msg: Any) -> None:
        """Raises BrokenPipeError/OSError when the child is gone."""
        with self._send_lock:
            self.conn.send(msg)

    @classmethod
    def spawn(cls, args: ServerArgs) -> SchedulerProcess:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_child_main, args=(args, child, args.log_level), name="sgl-scheduler", daemon=True)
        proc.start()
        child.close()  # NOTE: only the child holds its end, so its death shows up here as EOF
        return cls(proc, parent)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self, timeout: float | None = None) -> dict[str, Any]:
        """Blocks until the child reports; raises SchedulerStartError when it fails or dies first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if self.conn.poll(0.2):
                    msg = self.conn.recv()
                    if isinstance(msg, SchedulerReady):
                        return msg.info
                    if isinstance(msg, SchedulerFailed):
                        raise SchedulerStartError(msg.message)
                    raise SchedulerStartError(f"unexpected first message from the scheduler: {type(msg).__name__}")
            except (EOFError, OSError):
                pass
            if not self.process.is_alive():
                self.process.join(1)
                raise SchedulerStartError(f"the scheduler process exited with code {self.process.exitcode}")
            if deadline is not None and time.monotonic() > deadline:
                raise SchedulerStartError(f"the scheduler was not ready within {timeout} s")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Asks the child to shut down, then terminates and finally kills it; returns its exit code."""
        if self.process.is_alive():
            try:
                self.send(ShutdownReq())
            except (BrokenPipeError, EOFError, OSError):
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            logger.warning("the scheduler did not stop within %.0f s; terminating it", timeout)
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        try:
            self.conn.close()
        except OSError:
            pass
        return self.process.exitcode
