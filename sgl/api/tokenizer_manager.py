"""TokenizerManager: the API process's side of the pipe, around the shared RequestManager.

It owns two threads: a writer (so a large request never blocks the event loop on a full pipe) and a reader that
routes scheduler messages: outputs to the RequestManager and the metrics, info and flush replies to their awaiting
coroutines, and a failure or EOF to ``on_dead`` after every pending request was failed with a 500.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing.connection
import queue
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

from sgl.api.metrics import Metrics
from sgl.api.scheduler_process import SchedulerProcess
from sgl.core.ipc import (
    AbortReq,
    BatchOutput,
    FlushCacheReq,
    FlushCacheResp,
    GenerateReq,
    GetInfoReq,
    InfoResp,
    SchedulerFailed,
)
from sgl.core.request_manager import GenerateInput, ModelLimits, RequestManager
from sgl.core.tokenizer.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_STOP = object()


class SchedulerUnavailable(RuntimeError):
    """The scheduler died; every route that needs it answers 500 with this message."""


class TokenizerManager:
    def __init__(
        self, proc: SchedulerProcess, tokenizer: Tokenizer, limits: ModelLimits, model_info: dict[str, Any],
        on_dead: Callable[[str], None],
    ) -> None:
        self.proc = proc
        self.tokenizer = tokenizer
        self.limits = limits
        self.model_info = model_info
        self.metrics = Metrics()
        self.manager = RequestManager(tokenizer, limits, self._send)
        self.dead: str | None = None
        self._on_dead = on_dead
        self._closing = False
        self._lock = threading.Lock()
        self._live: set[str] = set()  # rids sent to the scheduler and not yet finished
        self._tokens = itertools.count(1)
        self._info_waiters: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._flush_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="sgl-pipe-writer", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="sgl-pipe-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    # the pipe ---------------------------------------------------------------------------------------------------
    def _send(self, msg: Any) -> None:
        if isinstance(msg, GenerateReq):
            with self._lock:
                self._live.add(msg.rid)
            self.metrics.on_sent(msg.rid)
        if self.dead is not None:
            # NOTE: a request registered after the failure still gets its 500 instead of waiting forever.
            self.manager.fail_all(self.dead)
            return
        self._outbox.put(msg)

    def _write_loop(self) -> None:
        while True:
            msg = self._outbox.get()
            if msg is _STOP:
                return
            try:
                self.proc.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                return  # the reader sees the EOF and reports the death

    def _read_loop(self) -> None:
        while True:
            try:
                msg = self.proc.conn.recv()
            except (EOFError, OSError):
                if self._closing:
                    return  # NOTE: the closer reaps the process; two threads joining it race on waitpid
                multiprocessing.connection.wait([self.proc.process.sentinel], 2)
                self._die(f"the scheduler process exited unexpectedly (exit code {self.proc.process.exitcode})")
                return
            if isinstance(msg, BatchOutput):
                self.metrics.on_outputs(msg.outputs)
                with self._lock:
                    for out in msg.outputs:
                        if out.finished is not None:
                            self._live.discard(out.rid)
                self.manager.on_output(msg)
            elif isinstance(msg, InfoResp):
                with self._lock:
                    waiter = self._info_waiters.pop(msg.token, None)
                if waiter is not None:
                    _resolve(waiter, msg)
            elif isinstance(msg, FlushCacheResp):
                with self._lock:
                    waiter = self._flush_waiters.pop(0) if self._flush_waiters else None
                if waiter is not None:
                    _resolve(waiter, msg)
            elif isinstance(msg, SchedulerFailed):
                self._die(msg.message)
                return

    def _die(self, message: str) -> None:
        if self._closing:
            return
        self.dead = message
        logger.error("scheduler died: %s", message)
        self.manager.fail_all(message)
        with self._lock:
            waiters = list(self._info_waiters.values()) + self._flush_waiters
            self._info_waiters.clear()
            self._flush_waiters = []
            live, self._live = list(self._live), set()
        self.metrics.forget(live)
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_fail, fut, SchedulerUnavailable(message))
        self._on_dead(message)

    # requests ---------------------------------------------------------------------------------------------------
    def check_alive(self) -> None:
        if self.dead is not None:
            raise SchedulerUnavailable(self.dead)

    def validate(self, obj: GenerateInput) -> None:
        """Raises ValueError (HTTP 400) for what the scheduler must never see."""
        self.manager.build(obj)

    def generate(self, obj: GenerateInput) -> AsyncGenerator[list[dict[str, Any]], None]:
        """Cumulative per-choice results; closing the iterator early aborts the request (its KV is freed)."""
        self.check_alive()
        return cast(AsyncGenerator[list[dict[str, Any]], None], self.manager.generate(obj))

    def abort(self, rid: str) -> None:
        self.manager.abort(rid)

    def abort_all(self) -> int:
        with self._lock:
            live = list(self._live)
        for rid in live:
            self._send(AbortReq(rid))
        return len(live)

    @property
    def num_pending(self) -> int:
        return self.manager.num_pending

    async def scheduler_info(self, timeout: float = 30.0) -> dict[str, Any]:
        self.check_alive()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        token = next(self._tokens)
        with self._lock:
            self._info_waiters[token] = (loop, fut)
        self._send(GetInfoReq(token))
        try:
            msg = await asyncio.wait_for(fut, timeout)
        finally:
            with self._lock:
                self._info_waiters.pop(token, None)
        return dict(msg.info)

    async def flush_cache(self, timeout: float = 30.0) -> FlushCacheResp:
        self.check_alive()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._flush_waiters.append((loop, fut))
        self._send(FlushCacheReq())
        result: FlushCacheResp = await asyncio.wait_for(fut, timeout)
        return result

    def close(self) -> None:
        """Stops the writer; the caller then stops the process (whose exit ends the reader)."""
        self._closing = True
        self._outbox.put(_STOP)
        self._writer.join(5)


def _resolve(waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]], value: Any) -> None:
    loop, fut = waiter

    def settle() -> None:
        if not fut.done():
            fut.set_result(value)

    loop.call_soon_threadsafe(settle)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
