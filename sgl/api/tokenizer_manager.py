"""TokenizerManager: the API process's side of the pipe, around the shared RequestManager and ReplyRouter.

It owns two threads: a writer (so a large request never blocks the event loop on a full pipe) and a reader that
feeds every scheduler message to the ReplyRouter (the one sgl.Engine uses too), after counting outputs for the
metrics; a failure or EOF fails every pending request with a 500 and then calls ``on_dead``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

from sgl.api.metrics import Metrics
from sgl.api.offload import offload
from sgl.api.scheduler_process import SchedulerHandle
from sgl.core.ipc import AbortReq, BatchOutput, FlushCacheResp, GenerateReq, SchedulerFailed
from sgl.core.replies import ReplyRouter, SchedulerUnavailable
from sgl.core.request_manager import GenerateInput, ModelLimits, PreparedRequest, RequestManager
from sgl.core.request_result import GenerateResult
from sgl.core.tokenizer.tokenizer import Tokenizer

__all__ = ["SchedulerUnavailable", "TokenizerManager"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = object()


class TokenizerManager:
    def __init__(
        self, proc: SchedulerHandle, tokenizer: Tokenizer, limits: ModelLimits, model_info: dict[str, Any],
        on_dead: Callable[[str], None],
    ) -> None:
        self.proc = proc
        self.tokenizer = tokenizer
        self.limits = limits
        self.model_info = model_info
        self.metrics = Metrics()
        self.manager = RequestManager(tokenizer, limits, self._send)
        self.replies = ReplyRouter(self.manager)
        self._on_dead = on_dead
        self._closing = False
        self._lock = threading.Lock()
        self._live: set[str] = set()  # rids sent to the scheduler and not yet finished
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="sgl-pipe-writer", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="sgl-pipe-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    @property
    def dead(self) -> str | None:
        return self.replies.failed

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
                msg = self.proc.recv()
            except (EOFError, OSError):
                if self._closing:
                    return  # NOTE: the closer reaps the process; two threads joining it race on waitpid
                self.proc.wait_dead(2)
                self._die(self.proc.exit_message())
                return
            if isinstance(msg, SchedulerFailed):
                self._die(self.proc.explain(msg.message))
                return
            if isinstance(msg, BatchOutput):
                self.metrics.on_outputs(msg.outputs, msg.deltas)
                with self._lock:
                    for out in msg.outputs:
                        if out.finished is not None:
                            self._live.discard(out.rid)
            self.replies.deliver(msg)

    def _die(self, message: str) -> None:
        if self._closing:
            return
        logger.error("scheduler died: %s", message)
        self.replies.fail(message)
        with self._lock:
            live, self._live = list(self._live), set()
        self.metrics.forget(live)
        self._on_dead(message)

    # requests ---------------------------------------------------------------------------------------------------
    def check_alive(self) -> None:
        if self.dead is not None:
            raise SchedulerUnavailable(self.dead)

    async def run(self, fn: Callable[[], T], size: int) -> T:
        """Runs CPU work of a request (templating, tokenizing) off the event loop when ``size`` says it is long."""
        self.check_alive()
        return await offload(fn, size)

    async def prepare(self, obj: GenerateInput) -> PreparedRequest:
        """Validates and tokenizes (off the event loop for a long prompt); ValueError (HTTP 400) for a bad input."""
        size = len(obj.text or "") if obj.input_ids is None else len(obj.input_ids)
        return await self.run(lambda: self.manager.prepare(obj), size)

    def generate(self, req: PreparedRequest) -> AsyncGenerator[list[GenerateResult], None]:
        """Cumulative per-choice results; closing the iterator early aborts the request (its KV is freed)."""
        self.check_alive()
        return self.manager.generate(req)  # type: ignore[return-value]

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
        msg = await asyncio.wait_for(asyncio.wrap_future(self.replies.info()), timeout)
        return dict(msg.info)

    async def flush_cache(self, timeout: float = 30.0) -> FlushCacheResp:
        self.check_alive()
        result: FlushCacheResp = await asyncio.wait_for(asyncio.wrap_future(self.replies.flush()), timeout)
        return result

    def close(self) -> None:
        """Stops the writer; the caller then stops the process (whose exit ends the reader)."""
        self._closing = True
        self._outbox.put(_STOP)
        self._writer.join(5)
