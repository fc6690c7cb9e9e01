"""`@function` programs: run one, run a batch on a thread pool, or stream one; and the default backend."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sgl.lang.backend.base import Backend, SamplingArgs
from sgl.lang.state import ProgramState

_default_backend: Backend | None = None
_backend_lock = threading.Lock()


def set_default_backend(backend: Backend) -> None:
    """The backend programs use when run() is given none."""
    global _default_backend
    if not isinstance(backend, Backend):
        raise TypeError(f"a backend must be a RuntimeEndpoint or OpenAICompatible, got {type(backend).__name__}")
    with _backend_lock:
        _default_backend = backend


def get_default_backend() -> Backend:
    with _backend_lock:
        if _default_backend is None:
            raise RuntimeError("no backend: call sgl.set_default_backend(sgl.RuntimeEndpoint(url)) or pass backend=")
        return _default_backend


class SglFunction:
    """A program: a Python function whose first argument is the state `s`."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.signature = inspect.signature(fn)
        if not self.signature.parameters:
            raise TypeError(f"@function {fn.__name__} must take the state as its first argument")
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def __call__(self, s: ProgramState, *args: Any, **kwargs: Any) -> Any:
        """Runs the body on an existing state, so one program can call another."""
        return self.fn(s, *args, **kwargs)

    def _bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        bound = self.signature.bind(None, *args, **kwargs)  # NOTE: raises TypeError for wrong arguments, here
        return tuple(bound.args[1:]), dict(bound.kwargs)

    def run(
        self, *args: Any, backend: Backend | None = None, stream: bool = False, max_new_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        stop: str | Sequence[str] | None = None, **kwargs: Any,
    ) -> ProgramState:
        """Runs the program; with stream=True it returns at once and `state.text_iter()` yields text as it comes.

        Sampling arguments here are defaults for every gen that leaves them unset. A server error raises
        BackendError here (or, when streaming, from text_iter and every read).
        """
        defaults = _defaults(max_new_tokens, temperature, top_p, top_k, stop)
        call_args, call_kwargs = self._bind(args, kwargs)
        state = ProgramState(backend or get_default_backend(), defaults, stream=stream)
        if stream:
            threading.Thread(target=self._execute, args=(state, call_args, call_kwargs, True), daemon=True,
                             name=f"sgl-program-{self.__name__}").start()
            return state
        self._execute(state, call_args, call_kwargs, False)
        state.sync()
        return state

    def _execute(self, state: ProgramState, args: tuple[Any, ...], kwargs: dict[str, Any], stream: bool) -> None:
        try:
            self.fn(state, *args, **kwargs)
        except BaseException as exc:
            if not stream:
                raise
            state._fail(exc)
        finally:
            state._finish_stream()

    def run_batch(
        self, batch_kwargs: Sequence[dict[str, Any]], *, backend: Backend | None = None,
        num_threads: int | str = "auto", progress_bar: bool = False, return_exceptions: bool = False,
        max_new_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
        top_k: int | None = None, stop: str | Sequence[str] | None = None,
    ) -> list[Any]:
        """Runs the program once per kwargs dict on `num_threads` threads; states come back in input order.

        The first failure is raised after all programs finish, unless return_exceptions=True puts each
        exception in its program's place.
        """
        if not batch_kwargs:
            return []
        threads = min(64, len(batch_kwargs)) if num_threads == "auto" else int(num_threads)
        if threads < 1:
            raise ValueError(f"num_threads must be >= 1 or 'auto', got {num_threads!r}")
        chosen = backend or get_default_backend()
        for kwargs in batch_kwargs:
            self._bind((), dict(kwargs))

        def one(kwargs: dict[str, Any]) -> ProgramState:
            return self.run(backend=chosen, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            top_k=top_k, stop=stop, **kwargs)

        results: list[Any] = [None] * len(batch_kwargs)
        bar = _progress(len(batch_kwargs)) if progress_bar else None
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sgl-batch") as pool:
            futures = [pool.submit(one, dict(kw)) for kw in batch_kwargs]
            for i, future in enumerate(futures):
                exc = future.exception()
                results[i] = exc if exc is not None else future.result()
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        if not return_exceptions:
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        return results


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="programs")


def _defaults(max_new_tokens: int | None, temperature: float | None, top_p: float | None, top_k: int | None,
              stop: str | Sequence[str] | None) -> SamplingArgs:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return SamplingArgs(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, stop=stops)


def function(fn: Callable[..., Any]) -> SglFunction:
    """Decorates `def prog(s, ...)` into a program with run() and run_batch()."""
    return SglFunction(fn)
