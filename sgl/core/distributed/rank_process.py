"""One scheduler rank in its own process, joined to its parent by a pipe that carries the ipc dataclasses (pickle).

The child joins its tensor-parallel group, builds the runtime, answers SchedulerReady(info) or
SchedulerFailed(message), then runs the scheduler loop until a ShutdownReq arrives or the pipe closes (the parent
died). A watchdog thread ends the child with a non-zero code when the scheduler is busy but makes no progress, so a
hung device (or, under TP, a peer that is gone) never looks like a slow server. The API server and the offline
Engine (its follower ranks) both start ranks here.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, NamedTuple

from sgl.core.config import ServerArgs
from sgl.core.distributed.topology import RankPlace
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


def _exit_on_stall(stalled: float, stuck_step: str, who: str = "one scheduler step") -> None:
    logger.error("watchdog: %s ran %.1f s, past --watchdog-timeout; stuck step: %s; exiting", who, stalled,
                 stuck_step)
    logging.shutdown()
    os._exit(WATCHDOG_EXIT)


def _child_main(args: ServerArgs, place: RankPlace, conn: Connection, log_level: str) -> None:
    """Entry point of one scheduler rank (spawned: it imports torch afresh, never inherits the API's state).

    Rank 0 of a replica talks to the API over ``conn``; a follower rank uses its pipe only to report start-up and
    failure, and receives its work from rank 0's broadcast (``step_sync``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # NOTE: Ctrl-C reaches the whole group; the API process decides
    tag = "scheduler" if place.tp_size == 1 else f"scheduler {place.name}"
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s [{tag}] %(levelname)s %(message)s")
    send_lock = threading.Lock()
    leader = place.tp_rank == 0

    def send(msg: Any) -> None:
        if not leader and not isinstance(msg, SchedulerFailed):
            return  # NOTE: a follower's outputs are rank 0's too; only rank 0 answers the API
        with send_lock:
            try:
                conn.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                pass  # the API process is gone; the loop ends at the next recv

    try:
        from sgl.core.distributed.group import join_group
        from sgl.core.plugins import select_platform
        from sgl.core.runtime import build_runtime

        parallel = join_group(args, place, select_platform(args.backend))
        runtime = build_runtime(args, parallel)
        info = {**runtime.model_info(), **runtime.scheduler.info(), "scheduler_pid": os.getpid()}
    except Exception as exc:  # noqa: BLE001 - every start-up failure becomes one clear message for the API process
        logger.debug("start-up failed:\n%s", traceback.format_exc())
        send(SchedulerFailed(f"{type(exc).__name__}: {exc}"))
        conn.close()
        raise SystemExit(STARTUP_FAILED_EXIT) from None
    with send_lock:
        conn.send(SchedulerReady(info))

    from sgl.core.distributed.group import leave_group
    from sgl.core.distributed.step_sync import follower_recv, leader_recv
    from sgl.core.scheduler.loop import run_scheduler_loop

    scheduler = runtime.scheduler
    runner = scheduler.runner
    if place.tp_size == 1:
        watchdog = Watchdog(args.watchdog_timeout, lambda: scheduler.is_busy,
                            lambda s: _exit_on_stall(s, runner.describe_step())).start()
    else:
        # NOTE: under TP every iteration meets the peers in a collective (rank 0 broadcasts even when idle), so an
        # iteration that never ends is a peer that is gone or hangs: the watchdog counts idle time too
        who = f"tensor-parallel rank {place.tp_rank} (stuck in a collective: a peer rank is gone or hangs)"
        watchdog = Watchdog(args.watchdog_timeout, lambda: True,
                            lambda s: _exit_on_stall(s, runner.describe_step(), who)).start()

    def recv_pipe(block: bool, timeout: float) -> list[Any]:
        msgs: list[Any] = []
        try:
            if conn.poll(timeout if block else 0):
                msgs.append(conn.recv())
                while conn.poll(0):
                    msgs.append(conn.recv())
        except (EOFError, OSError):
            msgs.append(ShutdownReq())  # the API process is gone: stop instead of serving no one
        return msgs

    recv: Callable[[bool, float], list[Any]] = recv_pipe
    if place.tp_size > 1:
        recv = leader_recv(recv_pipe, parallel, scheduler) if leader else follower_recv(parallel, scheduler)
    stats_log = runtime.stats_log()

    def on_progress() -> None:
        watchdog.beat()
        if leader:
            stats_log.tick()

    run_scheduler_loop(scheduler, recv, send, on_progress=on_progress)
    leave_group()
    watchdog.stop()
    conn.close()


class RankHandle(NamedTuple):
    place: RankPlace
    process: BaseProcess
    conn: Connection


def spawn_rank(args: ServerArgs, place: RankPlace) -> RankHandle:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    name = "sgl-scheduler" if place.tp_size == 1 else f"sgl-scheduler-{place.name.replace(' ', '-')}"
    proc = ctx.Process(target=_child_main, args=(args, place, child, args.log_level), name=name, daemon=True)
    proc.start()
    child.close()  # NOTE: only the child holds its end, so its death shows up here as EOF
    return RankHandle(place, proc, parent)


def wait_ranks_ready(ranks: list[RankHandle], timeout: float | None = None) -> list[dict[str, Any]]:
    """Blocks until every rank reports ready; raises SchedulerStartError naming the first rank that fails or dies."""
    deadline = None if timeout is None else time.monotonic() + timeout
    infos: dict[int, dict[str, Any]] = {}
    multi = len(ranks) > 1 or ranks[0].place.tp_size > 1
    while len(infos) < len(ranks):
        for i, r in enumerate(ranks):
            if i in infos:
                continue
            who = f"rank {r.place.name}: " if multi else ""
            try:
                if r.conn.poll(0.05):
                    msg = r.conn.recv()
                    if isinstance(msg, SchedulerReady):
                        infos[i] = msg.info
                        continue
                    if isinstance(msg, SchedulerFailed):
                        raise SchedulerStartError(who + msg.message)
                    raise SchedulerStartError(f"{who}unexpected first message from the scheduler: {type(msg).__name__}")
            except (EOFError, OSError):
                pass
            if not r.process.is_alive():
                r.process.join(1)
                raise SchedulerStartError(f"{who}the scheduler process exited with code {r.process.exitcode}")
        if deadline is not None and time.monotonic() > deadline:
            raise SchedulerStartError(f"the scheduler was not ready within {timeout} s")
    return [infos[i] for i in range(len(ranks))]


def stop_ranks(ranks: list[RankHandle], timeout: float = 10.0) -> list[int | None]:
    """Asks each rank to shut down (rank 0 passes it on to its followers), then terminates and finally kills."""
    for r in ranks:
        if r.process.is_alive():
            with contextlib.suppress(BrokenPipeError, EOFError, OSError):
                r.conn.send(ShutdownReq())
    deadline = time.monotonic() + timeout
    for r in ranks:
        r.process.join(max(0.0, deadline - time.monotonic()))
    for r in ranks:
        if r.process.is_alive():
            logger.warning("scheduler %s did not stop within %.0f s; terminating it", r.place.name, timeout)
            r.process.terminate()
            r.process.join(5)
        if r.process.is_alive():
            r.process.kill()
            r.process.join(5)
        with contextlib.suppress(OSError):
            r.conn.close()
    return [r.process.exitcode for r in ranks]
