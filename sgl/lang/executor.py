"""Runs one state's operations in order, off the caller's thread, so forks and batches proceed in parallel."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

# NOTE: operations never wait on each other or run user code, so a bounded shared pool cannot deadlock; a
# full pool only queues work.
_POOL = ThreadPoolExecutor(max_workers=128, thread_name_prefix="sgl-lang")


class SerialQueue:
    """Operations submitted here run one after another in submission order; the first failure skips the rest.

    `s += gen(...)` returns at once; reading the state calls wait(), which re-raises the failure.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: deque[tuple[Callable[[], None], bool]] = deque()
        self._running = False
        self._idle = threading.Event()
        self._idle.set()
        self.error: BaseException | None = None

    def submit(self, op: Callable[[], None], always: bool = False) -> None:
        """`always` ops run even after a failure (e.g. the end-of-stream marker a reader waits for)."""
        with self._lock:
            self._pending.append((op, always))
            self._idle.clear()
            start = not self._running
            self._running = True
        if start:
            _POOL.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._running = False
                    self._idle.set()
                    return
                op, always = self._pending.popleft()
            if self.error is None or always:
                try:
                    op()
                except BaseException as exc:  # handed to whoever reads the state next
                    self.error = exc

    def wait(self) -> None:
        self._idle.wait()
        if self.error is not None:
            raise self.error
