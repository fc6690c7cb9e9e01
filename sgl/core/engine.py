"""sgl.Engine: the offline and async Python API, in SGLang's shape.

The scheduler runs in a background thread of this process; requests go through the same RequestManager as the
HTTP server's, so validation, stop strings and detokenization behave identically offline and online.

The synchronous API runs its coroutines on the engine's own event loop, in a thread of its own: it never needs the
caller's thread to be free of a running loop, so ``generate`` works in a notebook cell as in a script.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator
from typing import Any, TypeVar

from sgl.core.config import ServerArgs
from sgl.core.distributed.engine_group import start_engine_group
from sgl.core.ipc import Inbox, ShutdownReq, start_thread
from sgl.core.lora.base import FEATURE as LORA_FEATURE
from sgl.core.pooling import pooling_method
from sgl.core.replies import ReplyRouter
from sgl.core.request_manager import GenerateInput, PreparedRequest, RequestManager
from sgl.core.request_result import GenerateResult
from sgl.core.runtime import build_runtime
from sgl.core.sampling.params import SamplingParams
from sgl.core.scheduler.loop import run_scheduler_loop

logger = logging.getLogger(__name__)

Params = SamplingParams | dict[str, Any] | None
T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def show_logs(level: str) -> None:
    """sgl's records at ``level`` reach the user even where nothing configured logging (a notebook, a script).

    NOTE: a handler is added only when none would receive the records, so an application's (or pytest's) own
    logging configuration is left as it is and nothing is printed twice.
    """
    sgl_logger = logging.getLogger("sgl")
    sgl_logger.setLevel(level.upper())
    if not sgl_logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        sgl_logger.addHandler(handler)


class Engine:
    """``sgl.Engine(model_path=..., backend=..., **server_args)``; with no model_path it runs the demo model."""

    def __init__(self, model_path: str | None = None, backend: str | None = None, **server_args: Any) -> None:
        # NOTE: offline, the one caller submits its whole batch at once: the waiting queue is bounded by the batch
        server_args.setdefault("max_queued_requests", None)
        self.server_args = ServerArgs.from_kwargs(model_path=model_path, backend=backend, **server_args)
        show_logs(self.server_args.log_level)
        self._group = start_engine_group(self.server_args)  # NOTE: tp_size > 1: follower ranks, this process rank 0
        try:
            self.runtime = build_runtime(self.server_args, self._group.parallel)
            self._group.wait_ready()
        except BaseException:
            self._group.close()
            raise
        self.tokenizer = self.runtime.tokenizer
        self.pooling = pooling_method(self.runtime.model_path) if self.server_args.is_embedding else None
        self._inbox = Inbox()
        self.manager = RequestManager(self.tokenizer, self.runtime.limits, self._inbox.put)
        self.replies = ReplyRouter(self.manager)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = start_thread(self._loop.run_forever, "sgl-engine-loop")
        self._closed = False
        self._thread = start_thread(self._run_scheduler, "sgl-scheduler")

    # plumbing ---------------------------------------------------------------------------------------------------
    def encode(
        self, prompt: str | list[str] | None = None, input_ids: list[int] | list[list[int]] | None = None,
    ) -> Any:
        """SGLang's ``{"embedding": [...], "meta_info": {...}}`` for one prompt, a list of them for a list; the model
        must be served as an embedding model (``is_embedding=True``)."""
        if not self.server_args.is_embedding:
            raise ValueError("encode needs an embedding model: create the engine with is_embedding=True")
        objs, batched = self._prepare(prompt, input_ids, {"max_new_tokens": 0}, False, None, None, False, None,
                                      None, self.pooling)
        results = self._run_sync(self._gather_embeddings(objs))
        return results if batched else results[0]

    async def _gather_embeddings(self, objs: list[PreparedRequest]) -> list[dict[str, Any]]:
        async def one(obj: PreparedRequest) -> dict[str, Any]:
            final: list[GenerateResult] = []
            async for final in self.manager.generate(obj):
                pass
            return {"embedding": final[0].embedding, "meta_info": final[0].meta.to_dict()}

        return list(await asyncio.gather(*(one(o) for o in objs)))

    def _run_scheduler(self) -> None:
        stats_log = self.runtime.stats_log()
        recv = self._group.recv(lambda block, t: self._inbox.drain(block, t), self.runtime.scheduler)
        run_scheduler_loop(self.runtime.scheduler, recv, self.replies.deliver, on_progress=stats_log.tick)

    def _run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the engine's loop thread and waits for it, whether or not this thread runs a loop."""
        if threading.current_thread() is self._loop_thread:
            coro.close()
            raise RuntimeError("the engine's synchronous API was called from its own event loop")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # NOTE: an interrupted call (Ctrl-C in a notebook) aborts its requests instead of leaving them
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the engine was shut down")
        if self.replies.failed:
            raise RuntimeError(self.replies.failed)

    @staticmethod
    def _inputs(
        prompt: str | list[str] | None, input_ids: list[int] | list[list[int]] | None, sampling_params: Any,
        return_logprob: bool, logprob_start_len: int | None, top_logprobs_num: int | None, stream: bool,
        rid: str | list[str] | None, lora_path: str | list[str | None] | None = None, pooling: str | None = None,
    ) -> tuple[list[GenerateInput], bool]:
        if (prompt is None) == (input_ids is None):
            raise ValueError("give exactly one of prompt and input_ids")
        batched = isinstance(prompt, list) or (isinstance(input_ids, list) and bool(input_ids)
                                               and isinstance(input_ids[0], list))
        prompts: list[Any] = (prompt if batched else [prompt]) if prompt is not None else \
            (input_ids if batched else [input_ids])  # type: ignore[assignment]
        n = len(prompts)
        if batched and n == 0:
            raise ValueError("the prompt list is empty")
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * n
        rids = rid if isinstance(rid, list) else [rid] * n
        loras = lora_path if isinstance(lora_path, list) else [lora_path] * n
        if len(params) != n or len(rids) != n or len(loras) != n:
            raise ValueError(f"sampling_params, rid and lora_path must have one entry per prompt ({n})")
        if rid is not None and not isinstance(rid, list) and n > 1:
            raise ValueError("a batch needs a list of rids")
        objs = [
            GenerateInput(
                text=p if prompt is not None else None, input_ids=p if input_ids is not None else None,
                sampling_params=sp,
                rid=r, return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                top_logprobs_num=top_logprobs_num, stream=stream, lora_path=lora, pooling=pooling,
            )
            for p, sp, r, lora in zip(prompts, params, rids, loras)
        ]
        return objs, batched

    def _prepare(self, *args: Any) -> tuple[list[PreparedRequest], bool]:
        """Checks the engine and every input before anything is sent (all or nothing for a batch)."""
        self._check_open()
        objs, batched = self._inputs(*args)
        if objs[0].stream and batched:
            raise ValueError("stream=True takes a single prompt")
        return [self.manager.prepare(obj) for obj in objs], batched

    # public API -------------------------------------------------------------------------------------------------
    def generate(
        self, prompt: str | list[str] | None = None, sampling_params: Params | list[Params] = None,
        input_ids: list[int] | list[list[int]] | None = None, return_logprob: bool = False,
        logprob_start_len: int | None = None, top_logprobs_num: int | None = None, stream: bool = False,
        rid: str | list[str] | None = None, lora_path: str | list[str | None] | None = None,
    ) -> Any:
        """A dict for one prompt (a list when n > 1), a list for a list; with stream=True an iterator of chunks.
        ``lora_path``: a loaded LoRA adapter's name, or one (or None) per prompt."""
        objs, batched = self._prepare(prompt, input_ids, sampling_params, return_logprob, logprob_start_len,
                                      top_logprobs_num, stream, rid, lora_path)
        if stream:
            return self._stream_sync(objs[0])
        results = self._run_sync(self._gather(objs))
        return results if batched else results[0]

    def _stream_sync(self, obj: PreparedRequest) -> Iterator[Any]:
        agen = self._stream(obj)
        try:
            while True:
                try:
                    yield self._run_sync(_next(agen))
                except StopAsyncIteration:
                    return
        finally:
            if self._loop.is_running():
                self._run_sync(_aclose(agen))  # NOTE: an abandoned stream aborts its request

    async def _one(self, obj: PreparedRequest) -> Any:
        final: list[GenerateResult] = []
        async for final in self.manager.generate(obj):
            pass
        return _public(final)

    async def _gather(self, objs: list[PreparedRequest]) -> list[Any]:
        return list(await asyncio.gather(*(self._one(o) for o in objs)))

    async def _stream(self, obj: PreparedRequest) -> AsyncGenerator[Any, None]:
        async for chunk in self.manager.generate(obj):
            yield _public(chunk)

    async def async_generate(
        self, prompt: str | list[str] | None = None, sampling_params: Params | list[Params] = None,
        input_ids: list[int] | list[list[int]] | None = None, return_logprob: bool = False,
        logprob_start_len: int | None = None, top_logprobs_num: int | None = None, stream: bool = False,
        rid: str | list[str] | None = None, lora_path: str | list[str | None] | None = None,
    ) -> Any:
        """Awaitable result; with stream=True an async iterator of cumulative chunks."""
        objs, batched = self._prepare(prompt, input_ids, sampling_params, return_logprob, logprob_start_len,
                                      top_logprobs_num, stream, rid, lora_path)
        if stream:
            return self._stream(objs[0])
        results = await self._gather(objs)
        return results if batched else results[0]

    def abort_request(self, rid: str) -> None:
        self.manager.abort(rid)

    def get_server_info(self, timeout: float = 30.0) -> dict[str, Any]:
        self._check_open()
        info = self.replies.info().result(timeout)  # NOTE: TimeoutError when the scheduler does not answer
        return {**self.runtime.model_info(), **info.info}

    def _feature_call(self, method: str, kwargs: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._check_open()
        result: dict[str, Any] = self.replies.feature_call(LORA_FEATURE, method, kwargs).result(timeout).info
        if "error" in result:
            raise ValueError(result["error"])
        return result

    def load_lora_adapter(self, lora_name: str, lora_path: str, timeout: float = 300.0) -> dict[str, Any]:
        """Loads a PEFT adapter while serving; ValueError says why one is refused (rank, modules, shapes)."""
        return self._feature_call("load", {"lora_name": lora_name, "lora_path": lora_path}, timeout)

    def unload_lora_adapter(self, lora_name: str, timeout: float = 30.0) -> dict[str, Any]:
        """New requests can no longer name it; those already running on it finish first."""
        return self._feature_call("unload", {"lora_name": lora_name}, timeout)

    def list_lora_adapters(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        adapters: list[dict[str, Any]] = self._feature_call("list", {}, timeout)["adapters"]
        return adapters

    def flush_cache(self, timeout: float = 30.0) -> bool:
        self._check_open()
        return bool(self.replies.flush().result(timeout).ok)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop_thread.is_alive():
            asyncio.run_coroutine_threadsafe(_cancel_pending(), self._loop).result(timeout=30)
        self._inbox.put(ShutdownReq())
        self._thread.join(timeout=30)
        self._group.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=30)
        self._loop.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:
            pass


async def _next(agen: AsyncGenerator[T, None]) -> T:
    return await agen.__anext__()


async def _aclose(agen: AsyncGenerator[Any, None]) -> None:
    await agen.aclose()


async def _cancel_pending() -> None:
    """Cancels the engine loop's requests still in flight, so they abort instead of outliving the engine."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _public(results: list[GenerateResult]) -> Any:
    """SGLang's shape: one dict per choice, a list of them when n > 1."""
    dicts = [r.to_dict() for r in results]
    return dicts[0] if len(dicts) == 1 else dicts
