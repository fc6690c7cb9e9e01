"""The API side's handle on a scheduler replica: its ranks' processes (started by sgl.core.distributed.rank_process),
rank 0's pipe, and a watcher that turns a follower rank's death into one clear failure."""

from __future__ import annotations

import logging
import multiprocessing.connection
import threading
import time
from typing import Any, Protocol

from sgl.core.config import ServerArgs
from sgl.core.distributed.rank_process import (
    RankHandle,
    SchedulerStartError,
    Watchdog,
    spawn_rank,
    stop_ranks,
    wait_ranks_ready,
)
from sgl.core.distributed.topology import local_ranks, replica_addr
from sgl.core.ipc import SchedulerFailed

__all__ = ["SchedulerHandle", "SchedulerProcess", "SchedulerStartError", "Watchdog"]

logger = logging.getLogger(__name__)


class SchedulerHandle(Protocol):
    """What the API needs of its schedulers: one replica (SchedulerProcess) or several behind a dispatcher."""

    def send(self, msg: Any) -> None: ...
    def recv(self) -> Any: ...
    def wait_dead(self, timeout: float) -> None: ...
    def wait_ready(self, timeout: float | None = None) -> dict[str, Any]: ...
    def explain(self, message: str) -> str: ...
    def exit_message(self) -> str: ...
    def stop(self, timeout: float = 10.0) -> int | None: ...


class SchedulerProcess:
    """The API side's handle on one replica: rank 0's connection and process (reading it is the TokenizerManager's
    job), and the follower ranks of its tensor-parallel group, watched so that one dying takes the replica down."""

    def __init__(self, ranks: list[RankHandle]) -> None:
        self.ranks = ranks
        self.process = ranks[0].process
        self.conn = ranks[0].conn
        self._send_lock = threading.Lock()  # NOTE: one writer at a time, or pickled frames interleave
        self._peer_death: str | None = None
        self._stopping = False

    def send(self, msg: Any) -> None:
        """Raises BrokenPipeError/OSError when the child is gone."""
        with self._send_lock:
            self.conn.send(msg)

    def recv(self) -> Any:
        """The next message from rank 0; EOFError/OSError when it is gone."""
        return self.conn.recv()

    def wait_dead(self, timeout: float) -> None:
        multiprocessing.connection.wait([self.process.sentinel], timeout)

    @classmethod
    def spawn(cls, args: ServerArgs, replica: int = 0, addr: str | None = None) -> SchedulerProcess:
        """Starts this node's ranks of ``replica``; ``addr`` is its group's TCP store (chosen here when None)."""
        places = local_ranks(args, replica, replica_addr(args, replica) if addr is None else addr)
        return cls([spawn_rank(args, p) for p in places])

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self, timeout: float | None = None) -> dict[str, Any]:
        """Blocks until every rank is ready; raises SchedulerStartError when one fails or dies first."""
        info = {**wait_ranks_ready(self.ranks, timeout)[0], "scheduler_pids": [r.process.pid for r in self.ranks]}
        if len(self.ranks) > 1:
            threading.Thread(target=self._watch_followers, name="sgl-rank-watch", daemon=True).start()
        return info

    def _watch_followers(self) -> None:
        """A follower that fails or exits takes rank 0 down too, so the reader sees one death and says whose."""
        followers = self.ranks[1:]
        waitables: list[Any] = [r.process.sentinel for r in followers] + [r.conn for r in followers]
        while not self._stopping:
            ready = multiprocessing.connection.wait(waitables + [self.process.sentinel], 1.0)
            if self._stopping:
                return
            # NOTE: followers first: rank 0 exits right after a peer's death breaks its collective, often before
            # this thread wakes, and the death to report is the follower's
            for r in followers:
                if r.conn not in ready and r.process.sentinel not in ready:
                    continue
                failed = None
                if r.conn in ready:
                    try:
                        msg = r.conn.recv()
                        failed = msg.message if isinstance(msg, SchedulerFailed) else None
                    except (EOFError, OSError):
                        pass
                r.process.join(5)
                if failed is None and r.process.exitcode is None:
                    continue  # NOTE: not a death after all (nothing but a failure is ever sent after ready)
                self._peer_death = f"tensor-parallel rank {r.place.name} (pid {r.process.pid}) " + (
                    f"failed: {failed}" if failed else f"exited with code {r.process.exitcode}")
                logger.error("%s; stopping its replica", self._peer_death)
                if self.process.is_alive():
                    self.process.terminate()
                return
            if self.process.sentinel in ready:
                return

    def explain(self, message: str) -> str:
        """``message`` (rank 0's failure), led by the follower's death that caused it when there was one."""
        if len(self.ranks) > 1 and self._peer_death is None:
            deadline = time.monotonic() + 2.0  # NOTE: rank 0 may notice before the watcher does
            while self._peer_death is None and time.monotonic() < deadline:
                time.sleep(0.05)
        return f"{self._peer_death}; rank 0: {message}" if self._peer_death else message

    def exit_message(self) -> str:
        return self.explain(f"the scheduler process exited unexpectedly (exit code {self.process.exitcode})")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Asks every rank to shut down, then terminates and finally kills them; returns rank 0's exit code."""
        self._stopping = True
        return stop_ranks(self.ranks, timeout)[0]
