"""GrammarManager: compiles constraints off the scheduler thread and keeps each request's matcher in step.

The scheduler owns one. ``start`` submits a compile (or reuses a cached one) and returns the request's
``RequestGrammar``; ``poll`` reports the requests whose compile failed or timed out, so the scheduler can finish
them with a 400 instead of blocking its queue. ``build_vocab_mask`` is the torch path from packed bitmasks to the
sampler's ``[B, V]`` forbidden mask.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import torch

from sgl.core.grammar.base import (
    BITS_PER_WORD,
    GRAMMAR_EXTRA,
    Grammar,
    GrammarBackend,
    GrammarCompileError,
    GrammarKey,
    GrammarKind,
    GrammarVocab,
    bitmask_words,
    grammar_key,
)
from sgl.core.ipc import FinishReason

if TYPE_CHECKING:
    from sgl.core.sampling.params import SamplingParams

logger = logging.getLogger(__name__)

DISABLED = "none"
AUTO = "auto"
DEFAULT_CACHE_ENTRIES = 512


def _disabled_message(key: GrammarKey) -> str:
    return f"{key.kind.value} needs grammar-constrained decoding, which is disabled (--grammar-backend none)"


def load_backend_class(name: str, registry: Any = None) -> type[GrammarBackend]:
    """The backend class registered as ``name``; ValueError (with the extra to install) when it cannot load."""
    if registry is None:
        from sgl.core.plugins import get_plugins

        registry = get_plugins().grammar_backends
    if name == AUTO:
        names = registry.names()
        if not names:
            raise ValueError(f"no grammar backend is installed; install one with {GRAMMAR_EXTRA}")
        name = names[0]
    try:
        cls = registry.get(name)
    except (ImportError, OSError) as exc:
        raise ValueError(f"grammar backend {name!r} cannot be imported ({exc}); install it with {GRAMMAR_EXTRA}") \
            from exc
    return cls  # type: ignore[no-any-return]


def check_grammar_request(params: SamplingParams, backend_name: str, registry: Any = None) -> None:
    """The edge's check of a request's constraint: ValueError when grammars are off, missing, or the spec is not
    even well-formed. Whether the compiler accepts it is known only later (a compile error finishes with a 400)."""
    key = grammar_key(params)
    if key is None:
        return
    if backend_name == DISABLED:
        raise ValueError(_disabled_message(key))
    if key.kind in (GrammarKind.JSON, GrammarKind.STRUCTURAL_TAG):
        name = key.kind.value
        try:
            schema = json.loads(key.spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} is not valid JSON: {exc}") from exc
        allowed = (dict, bool) if key.kind is GrammarKind.JSON else (dict,)
        if not isinstance(schema, allowed):
            raise ValueError(f"{name} must be a JSON object, got {type(schema).__name__}")
    elif not key.spec:
        raise ValueError(f"{key.kind.value} is empty")
    load_backend_class(backend_name, registry)


class RequestGrammar:
    """One request's constraint: first a compile in flight, then a matcher.

    NOTE: once ready, the matcher has accepted exactly the request's ``output_ids`` (``accepted`` counts them);
    ``sync`` restores that after anything (retraction) that may have moved one without the other.
    """

    def __init__(
        self, key: GrammarKey, future: Future[Grammar] | None, started: float, timeout_s: float,
        error: str | None = None,
    ) -> None:
        self.key = key
        self.future = future
        self.timeout_s = timeout_s
        self.deadline = started + timeout_s
        self.error = error
        self.grammar: Grammar | None = None
        self.accepted = 0

    @property
    def ready(self) -> bool:
        return self.grammar is not None

    def poll(self, now: float) -> bool:
        """True when settled (ready, or ``error`` set); False while the compile is still within its deadline."""
        if self.grammar is not None or self.error is not None:
            return True
        assert self.future is not None
        if self.future.done():
            exc = self.future.exception()
            if exc is None:
                self.grammar = self.future.result().fork()
            else:
                self.error = str(exc)
            return True
        if now >= self.deadline:
            self.error = f"compiling the {self.key.kind.value} timed out after {self.timeout_s:g}s"
            return True
        return False

    def advance(self, token_id: int, stop_token_ids: Sequence[int] | set[int]) -> FinishReason | None:
        """Accepts a sampled token; the reason the request ends here, if it does."""
        if not self.accept(token_id):
            return FinishReason("abort", message=f"the grammar rejected sampled token {token_id}", status_code=500)
        if self.grammar is not None and self.grammar.is_terminated():
            return FinishReason("stop", matched=token_id if token_id in stop_token_ids else None)
        return None

    def accept(self, token_id: int) -> bool:
        assert self.grammar is not None, "a request is scheduled only once its grammar is ready"
        ok = self.grammar.accept_token(token_id)
        if ok:
            self.accepted += 1
        return ok

    def is_terminated(self) -> bool:
        return self.grammar is not None and self.grammar.is_terminated()

    def matcher(self) -> Grammar:
        assert self.grammar is not None, "a request is scheduled only once its grammar is ready"
        return self.grammar

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher().fill_bitmask(bitmask, row)

    def jump_forward_string(self) -> str:
        return self.matcher().jump_forward_string()

    def sync(self, output_ids: Sequence[int]) -> None:
        """Makes the matcher correspond to ``output_ids`` (a prefix of what it accepted, or an extension of it)."""
        if self.grammar is None:
            return
        if self.accepted > len(output_ids):
            self.grammar.rollback(self.accepted - len(output_ids))
            self.accepted = len(output_ids)
        for token in output_ids[self.accepted :]:
            if not self.accept(token):
                raise RuntimeError(f"grammar rejected token {token} while replaying the request's own output")


class GrammarManager:
    """Compile pool, compile cache keyed by (kind, spec), and the set of requests still waiting for a compile."""

    def __init__(
        self, backend_name: str, vocab: GrammarVocab, timeout_s: float, workers: int | None = None,
        cache_entries: int = DEFAULT_CACHE_ENTRIES, registry: Any = None, synchronous: bool = False,
    ) -> None:
        self.backend_name = backend_name
        # NOTE: tensor-parallel ranks must agree on when a grammar is ready, so there a compile finishes at admission
        self.synchronous = synchronous
        self.vocab = vocab
        self.timeout_s = timeout_s
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.cache_entries = cache_entries
        self._registry = registry
        self._backend: GrammarBackend | None = None
        self._backend_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # NOTE: created on the first constrained request only
        self._cache: OrderedDict[GrammarKey, Future[Grammar]] = OrderedDict()
        self._pending: list[tuple[Any, RequestGrammar]] = []
        self.stats = {"compiles": 0, "cache_hits": 0, "failures": 0}

    # intake -----------------------------------------------------------------------------------------------------
    def start(self, owner: Any, key: GrammarKey) -> RequestGrammar:
        """Begins (or reuses) the compile of ``key`` for ``owner``; poll() reports owner if it fails."""
        now = time.monotonic()
        if self.backend_name == DISABLED:
            rg = RequestGrammar(key, None, now, 0.0, error=_disabled_message(key))
        else:
            future = self._cache.get(key)
            if future is None or (future.done() and future.exception() is not None and not self._is_spec_error(future)):
                future = self._submit(key)
            else:
                self.stats["cache_hits"] += 1
                self._cache.move_to_end(key)
            rg = RequestGrammar(key, future, now, self.timeout_s)
            if self.synchronous:
                wait([future], timeout=self.timeout_s)
        self._pending.append((owner, rg))
        return rg

    @staticmethod
    def _is_spec_error(future: Future[Grammar]) -> bool:
        """A bad spec fails the same way every time (cache it); a backend that could not load may be retried."""
        return isinstance(future.exception(), GrammarCompileError)

    def _submit(self, key: GrammarKey) -> Future[Grammar]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sgl-grammar")
        self.stats["compiles"] += 1
        future = self._pool.submit(self._compile, key)
        self._cache[key] = future
        while len(self._cache) > self.cache_entries:
            self._cache.popitem(last=False)
        return future

    def _compile(self, key: GrammarKey) -> Grammar:
        backend = self._get_backend()
        try:
            return backend.compile(key)
        except GrammarCompileError:
            raise
        except Exception as exc:  # a backend's own error type must still reach the client as a 400
            raise GrammarCompileError(f"invalid {key.kind.value}: {exc}") from exc

    def _get_backend(self) -> GrammarBackend:
        with self._backend_lock:
            if self._backend is None:
                cls = load_backend_class(self.backend_name, self._registry)
                self._backend = cls(self.vocab)
                logger.info("grammar backend %r ready", self.backend_name)
            return self._backend

    # progress ---------------------------------------------------------------------------------------------------
    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def poll(self) -> list[tuple[Any, FinishReason]]:
        """Settles what it can; returns (owner, abort reason) for each compile that failed or timed out."""
        if not self._pending:
            return []
        now = time.monotonic()
        failed: list[tuple[Any, FinishReason]] = []
        still: list[tuple[Any, RequestGrammar]] = []
        for owner, rg in self._pending:
            if not rg.poll(now):
                still.append((owner, rg))
            elif rg.error is not None:
                self.stats["failures"] += 1
                failed.append((owner, FinishReason("abort", message=rg.error, status_code=400)))
        self._pending = still
        return failed

    def wait(self, timeout: float) -> None:
        """Sleeps until some pending compile finishes or ``timeout`` passes (so an idle loop does not spin)."""
        futures = [rg.future for _, rg in self._pending if rg.future is not None]
        if futures:
            wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)

    def vocab_mask(
        self, grammars: Sequence[RequestGrammar | None], vocab_size: int, device: torch.device | str, pinned: bool
    ) -> torch.Tensor:
        """``build_vocab_mask`` with this manager's backend, which may fill the rows in parallel."""
        return build_vocab_mask(grammars, vocab_size, device, self._backend, pinned)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Packed int32 ``[B, W]`` (bit set = allowed) -> bool ``[B, vocab_size]`` (True = forbidden)."""
    shifts = torch.arange(BITS_PER_WORD, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return (bits == 0).reshape(bitmask.shape[0], -1)[:, :vocab_size]


def build_vocab_mask(
    grammars: Sequence[RequestGrammar | None], vocab_size: int, device: torch.device | str,
    backend: GrammarBackend | None = None, pinned: bool = False,
) -> torch.Tensor:
    """The sampler's forbidden mask for one step; rows without a grammar forbid nothing.

    NOTE: the bitmask is filled on the CPU (matchers are host code) and moved once, packed (32x smaller); from
    pinned memory the move is asynchronous, so the host never waits here for the forward pass it overlaps.
    """
    width = min(vocab_size, backend.mask_vocab_size) if backend is not None else vocab_size
    bitmask = torch.full((len(grammars), bitmask_words(width)), -1, dtype=torch.int32, pin_memory=pinned)
    rows = [row for row, rg in enumerate(grammars) if rg is not None]
    if backend is not None:
        backend.fill_bitmasks([grammars[row].matcher() for row in rows], bitmask, rows)  # type: ignore[union-attr]
    else:
        for row in rows:
            grammars[row].fill(bitmask, row)  # type: ignore[union-attr]
    on_host = torch.device(device).type == "cpu"
    forbidden = unpack_bitmask(bitmask if on_host else bitmask.to(device, non_blocking=pinned), width)
    if width == vocab_size:
        return forbidden
    # ids past the backend's masks: forbidden on constrained rows, free on the others
    constrained = torch.tensor([rg is not None for rg in grammars], pin_memory=pinned)
    if not on_host:
        constrained = constrained.to(device, non_blocking=pinned)
    return torch.cat([forbidden, constrained[:, None].expand(-1, vocab_size - width)], dim=1)
