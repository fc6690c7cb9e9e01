"""ReplyRouter: the one place that routes what the scheduler sends back, for sgl.Engine and the HTTP server alike.

Outputs go to the RequestManager; info and flush replies to whoever asked (a thread or a coroutine: both wait on a
``concurrent.futures.Future``, which ``asyncio.wrap_future`` awaits); a failure ends every pending request and
every waiter. The caller only feeds it messages, from whatever thread receives them.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any

from sgl.core.ipc import (
    BatchOutput,
    FlushCacheReq,
    FlushCacheResp,
    GetInfoReq,
    InfoResp,
    SchedulerFailed,
)
from sgl.core.request_manager import RequestManager


class SchedulerUnavailable(RuntimeError):
    """The scheduler died (or failed to start); the HTTP server answers 500 with this message."""


class ReplyRouter:
    def __init__(self, manager: RequestManager) -> None:
        self.manager = manager
        self.failed: str | None = None
        self._tokens = itertools.count(1)
        self._info: dict[int, Future[InfoResp]] = {}
        self._flush: deque[Future[FlushCacheResp]] = deque()  # NOTE: the scheduler answers flushes in order
        self._lock = threading.Lock()

    # asking -----------------------------------------------------------------------------------------------------
    def info(self) -> Future[InfoResp]:
        """Asks the scheduler for its info(); the future resolves on the receiving thread."""
        fut: Future[InfoResp] = Future()
        with self._lock:
            self._raise_if_failed()
            token = next(self._tokens)
            self._info[token] = fut
        self.manager.send(GetInfoReq(token))
        return fut

    def flush(self) -> Future[FlushCacheResp]:
        fut: Future[FlushCacheResp] = Future()
        with self._lock:
            self._raise_if_failed()
            self._flush.append(fut)
        self.manager.send(FlushCacheReq())
        return fut

    def _raise_if_failed(self) -> None:
        if self.failed is not None:
            raise SchedulerUnavailable(self.failed)

    # receiving --------------------------------------------------------------------------------------------------
    def deliver(self, msg: Any) -> None:
        """Routes one scheduler message; called on the thread that receives them."""
        if isinstance(msg, BatchOutput):
            self.manager.on_output(msg)
        elif isinstance(msg, InfoResp):
            with self._lock:
                info = self._info.pop(msg.token, None)
            _settle(info, msg)
        elif isinstance(msg, FlushCacheResp):
            with self._lock:
                flush = self._flush.popleft() if self._flush else None
            _settle(flush, msg)
        elif isinstance(msg, SchedulerFailed):
            self.fail(msg.message)

    def fail(self, message: str) -> None:
        """The scheduler is gone: pending requests end with a 500 abort, waiters raise SchedulerUnavailable."""
        with self._lock:
            if self.failed is None:
                self.failed = message
            waiters: list[Future[Any]] = [*self._info.values(), *self._flush]
            self._info.clear()
            self._flush.clear()
        self.manager.fail_all(message)
        for fut in waiters:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(SchedulerUnavailable(message))


def _settle(fut: Future[Any] | None, value: Any) -> None:
    if fut is not None and fut.set_running_or_notify_cancel():
        fut.set_result(value)
