"""`sgl serve`: the FastAPI app, uvicorn, the scheduler process, and the lifecycle that joins them.

Lifecycle (one log line each): starting -> scheduler ready -> listening -> draining -> stopped.
- The HTTP port opens while the scheduler loads; every route answers 503 until it is ready.
- The first SIGINT/SIGTERM drains: new requests get 503, running ones get up to --shutdown-timeout, the rest are
  aborted; a second signal stops at once. The scheduler process is always stopped before we exit.
- A scheduler that fails to start, or dies later, makes the server exit non-zero (pending requests get 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sgl import __version__
from sgl.api import lora_routes, native_routes, openai_routes
from sgl.api.auth import AuthMiddleware
from sgl.api.data_parallel import DataParallelScheduler
from sgl.api.errors import install_error_handlers
from sgl.api.limits import BodyLimitMiddleware
from sgl.api.node import serve_node
from sgl.api.openapi_doc import install_openapi
from sgl.api.scheduler_process import SchedulerHandle, SchedulerProcess, SchedulerStartError
from sgl.api.state import GateMiddleware, ServerState
from sgl.api.tokenizer_manager import TokenizerManager
from sgl.core.config import ServerArgs
from sgl.core.model.source import load_tokenizer, resolve_paths
from sgl.core.request_input import ModelLimits
from sgl.core.tokenizer.tokenizer import Tokenizer

logger = logging.getLogger("sgl.serve")

ABORT_GRACE_S = 3.0  # after aborting, how long the aborted responses get to reach their clients
DEATH_GRACE_S = 3.0


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="sgl", version=__version__, docs_url=None, redoc_url=None)
    app.state.sgl = state
    install_error_handlers(app)
    install_openapi(app, state)
    app.include_router(openai_routes.router)
    app.include_router(native_routes.router)
    app.include_router(lora_routes.router)
    # NOTE: the last middleware added runs first: CORS -> gate (503) -> auth (401) -> body cap (413) -> routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.args.max_request_bytes)
    if state.args.api_key:
        app.add_middleware(AuthMiddleware, api_key=state.args.api_key)
    app.add_middleware(GateMiddleware, state=state)
    if state.args.origins:
        app.add_middleware(CORSMiddleware, allow_origins=state.args.origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=False)
    return app


class _Server(uvicorn.Server):
    """uvicorn, with our own signal handling: drain first instead of closing the socket at once."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.lifecycle.on_signal(signal.Signals(sig).name)


class Lifecycle:
    def __init__(self, state: ServerState, proc: SchedulerHandle) -> None:
        self.state = state
        self.proc = proc
        self.server: _Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _exit(self, force: bool = False) -> None:
        assert self.server is not None
        self.server.should_exit = True
        if force:
            self.server.force_exit = True

    # start-up ---------------------------------------------------------------------------------------------------
    async def run(self, server: _Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        ready: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        threading.Thread(target=self._wait_ready, args=(ready,), name="sgl-wait-ready", daemon=True).start()
        self._spawn(self._on_ready(ready))
        await server.serve()

    def _wait_ready(self, fut: asyncio.Future[dict[str, Any]]) -> None:
        assert self.loop is not None
        info: dict[str, Any] | None = None
        error: SchedulerStartError | None = None
        try:
            info = self.proc.wait_ready()
        except SchedulerStartError as exc:
            error = exc

        def settle() -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(info or {})

        with contextlib.suppress(RuntimeError):  # the loop may be gone if we are already shutting down
            self.loop.call_soon_threadsafe(settle)

    async def _on_ready(self, fut: asyncio.Future[dict[str, Any]]) -> None:
        state = self.state
        try:
            info = await fut
            # NOTE: off the loop: loading a large tokenizer (and its length bound) takes a while
            tokenizer = await asyncio.to_thread(_load_tokenizer, state.args)
        except (SchedulerStartError, OSError, ValueError) as exc:
            logger.error("scheduler failed to start: %s", exc)
            state.exit_code = 1
            state.phase = "stopped"
            self._exit()
            return
        limits = ModelLimits.of(state.args, int(info["context_length"]),
                                max(int(info["vocab_size"]), tokenizer.vocab_size), info.get("max_total_tokens"))
        state.manager = TokenizerManager(self.proc, tokenizer, limits, info, self._on_dead)
        logger.info("scheduler ready: %s (context %d, KV pool %s tokens, platform %s)", state.served_model_name,
                    limits.context_len, info.get("max_total_tokens"), info.get("platform"))
        assert self.server is not None
        while not self.server.started:
            if self.server.should_exit:
                return
            await asyncio.sleep(0.05)
        if state.phase != "starting":
            return
        state.phase = "ready"
        logger.info("listening on %s", self.url())

    def url(self) -> str:
        host, port = self.state.args.host, self.state.args.port
        assert self.server is not None
        for srv in getattr(self.server, "servers", []) or []:
            for sock in srv.sockets:
                port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    # shutdown ---------------------------------------------------------------------------------------------------
    def on_signal(self, name: str) -> None:
        self._signals += 1
        assert self.loop is not None
        if self._signals == 1:
            self.loop.call_soon_threadsafe(lambda: self._spawn(self._drain(name)))
        else:
            logger.warning("%s again: stopping now", name)
            if self.state.manager is not None:
                self.state.manager.abort_all()
            self.loop.call_soon_threadsafe(self._exit, True)

    async def _drain(self, why: str) -> None:
        state = self.state
        was = state.phase
        state.phase = "draining"
        tm = state.manager
        if was != "ready" or tm is None:
            logger.info("%s: stopping (the server was %s)", why, was)
            self._exit()
            return
        timeout = state.args.shutdown_timeout
        logger.info("%s: draining %d request(s) for up to %.1f s", why, tm.num_pending, timeout)
        await _wait_idle(tm, timeout)
        if tm.num_pending:
            logger.warning("drain timeout: aborting %d request(s)", tm.num_pending)
            tm.abort_all()
            await _wait_idle(tm, ABORT_GRACE_S)
        self._exit()

    def _on_dead(self, message: str) -> None:
        """Called on the pipe's reader thread after every pending request was failed."""
        loop = self.loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(lambda: self._spawn(self._after_death()))

    async def _after_death(self) -> None:
        self.state.exit_code = 1
        self.state.phase = "stopped"
        if self.state.manager is not None:
            await _wait_idle(self.state.manager, DEATH_GRACE_S)
        self._exit()


def _load_tokenizer(args: ServerArgs) -> Tokenizer:
    tokenizer = load_tokenizer(args)
    _ = tokenizer.max_token_bytes  # computed once here, not on the first request
    return tokenizer


async def _wait_idle(tm: TokenizerManager, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while tm.num_pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def http_parser() -> str:
    """httptools where installed (the serve extra brings it), else h11, said once.

    NOTE: every streamed token is one HTTP chunk; h11's pure-Python framing cost the API process ~10% of its CPU
    per streamed token on the demo model (docs/benchmarks.md, server vs offline engine).
    """
    try:
        import httptools  # noqa: F401
    except ImportError:
        logger.info("httptools is not installed: HTTP is parsed by h11, slower per streamed token "
                    "(pip install httptools)")
        return "h11"
    return "httptools"


def serve(args: ServerArgs) -> int:
    """Runs the server until it is stopped; returns the process exit code (0 after a clean shutdown)."""
    _configure_logging(args.log_level)
    args = resolve_paths(args)  # NOTE: here, so both processes use the same local (demo, Hub snapshot) paths
    model_path = args.model_path
    assert model_path is not None
    if args.node_rank > 0:
        return serve_node(args)
    logger.info("starting sgl %s: model %s on %s:%d", __version__, model_path, args.host, args.port)
    state = ServerState(args, model_path)
    try:
        # NOTE: an unknown --tool-call-parser or --reasoning-parser stops serve here, before the model loads
        _ = state.tool_parser, state.reasoning_parser, state.embedding_pooling
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    proc: SchedulerHandle = DataParallelScheduler.spawn(args) if args.dp_size > 1 else SchedulerProcess.spawn(args)
    lifecycle = Lifecycle(state, proc)
    config = uvicorn.Config(
        create_app(state), host=args.host, port=args.port, log_config=None, log_level=args.log_level.lower(),
        access_log=args.log_requests, timeout_graceful_shutdown=5, lifespan="off", http=http_parser(),
    )
    try:
        asyncio.run(lifecycle.run(_Server(config, lifecycle)))
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind the port
        state.exit_code = exc.code if isinstance(exc.code, int) and exc.code else 1
    finally:
        state.phase = "stopped"
        if state.manager is not None:
            state.manager.close()
        code = proc.stop()
        logger.info("stopped (scheduler exit code %s)", code)
    return state.exit_code
