"""RequestManager: the request front shared by sgl.Engine and the HTTP server.

``prepare`` validates and tokenizes an input (request_input.py, the one place that does); ``generate`` sends the
prepared request to the scheduler and turns the scheduler's token deltas into GenerateResult values (incremental
detokenization, stop strings held back while streaming, trimmed at the end).

NOTE: it lives in core, not api, because the offline Engine needs exactly the same edge; api adds HTTP on top.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sgl.core.ipc import AbortReq, BatchOutput, FinishReason, ReqOutput, TokenDelta
from sgl.core.request_input import (
    GenerateInput,
    ModelLimits,
    PreparedRequest,
    RequestError,
    prepare_request,
)
from sgl.core.request_result import GenerateResult, Logprobs, MetaInfo, TokenLogprob
from sgl.core.sampling.params import SamplingParams
from sgl.core.tokenizer.detokenizer import IncrementalDetokenizer
from sgl.core.tokenizer.tokenizer import Tokenizer

_News = ReqOutput | TokenDelta  # what the scheduler tells one request after a step

__all__ = ["GenerateInput", "ModelLimits", "PreparedRequest", "RequestError", "RequestManager"]


@dataclass
class _State:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    detok: IncrementalDetokenizer
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[_News]
    created: float
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finished: FinishReason | None = None
    cached_tokens: int = 0
    spec_verify_ct: int | None = None  # decode steps under speculation (None: speculation off)
    output_logprobs: list[tuple[float, int]] = field(default_factory=list)
    output_top: list[list[tuple[float, int]]] = field(default_factory=list)
    prompt_logprobs: list[tuple[float | None, int]] | None = None
    prompt_top: list[list[tuple[float, int]]] | None = None
    embedding: list[float] | None = None
    stream: bool = True  # False: nobody reads the text before the end, so it is detokenized once, at the end


class RequestManager:
    """Thread-safe: outputs arrive on the scheduler's thread and are handed to each request's own event loop."""

    def __init__(self, tokenizer: Tokenizer, limits: ModelLimits, send: Callable[[Any], None]) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.send = send
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    # validation -------------------------------------------------------------------------------------------------
    def prepare(self, obj: GenerateInput) -> PreparedRequest:
        """Validates and tokenizes; RequestError (a ValueError, HTTP 400) for what the scheduler must never see.

        NOTE: CPU-bound for a long prompt; the HTTP server calls it off its event loop.
        """
        return prepare_request(obj, self.tokenizer, self.limits, self._rid_in_use)

    def _rid_in_use(self, rid: str, n: int) -> bool:
        with self._lock:
            return rid in self._states or (n > 1 and any(k.startswith(f"{rid}-") for k in self._states))

    # running ----------------------------------------------------------------------------------------------------
    async def generate(self, req: PreparedRequest) -> AsyncIterator[list[GenerateResult]]:
        """Yields, for each step with news (only the last unless streaming), the cumulative result of every choice."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_News] = asyncio.Queue()  # NOTE: one queue for all choices of this call
        states: dict[str, _State] = {}
        for r in req.reqs:
            detok = IncrementalDetokenizer(self.tokenizer, r.input_ids,
                                           skip_special_tokens=r.sampling_params.skip_special_tokens)
            states[r.rid] = _State(r.rid, r.input_ids, r.sampling_params, detok, loop, queue, time.time(),
                                   stream=req.stream)
        with self._lock:
            if any(rid in self._states for rid in states):  # NOTE: prepare checked; this closes the race
                raise RequestError(f"request id {req.rid!r} is already in use", "rid")
            self._states.update(states)
        try:
            for r in req.reqs:
                self.send(r)
            while any(st.finished is None for st in states.values()):
                out = await queue.get()
                self._apply(states, out)
                while not queue.empty():
                    self._apply(states, queue.get_nowait())
                done = all(st.finished is not None for st in states.values())
                if req.stream or done:
                    yield [self._result(st, req) for st in states.values()]
        finally:
            with self._lock:
                for rid in states:
                    self._states.pop(rid, None)
            for st in states.values():
                if st.finished is None:
                    self.send(AbortReq(st.rid))

    def abort(self, rid: str) -> None:
        with self._lock:
            targets = [k for k in self._states if k == rid or k.startswith(f"{rid}-")]
        for k in targets:
            self.send(AbortReq(k))

    def on_output(self, msg: BatchOutput) -> None:
        """Called on the thread that receives scheduler messages.

        NOTE: one call_soon_threadsafe per event loop per message, not per output: each call writes the loop's
        wake-up pipe, and a step of 500 streaming requests paid 500 of those writes (and as many wake-ups).
        """
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[_News], _News]]] = {}
        states = self._states
        with self._lock:
            for out in msg.outputs:
                st = states.get(out.rid)
                if st is not None:
                    by_loop.setdefault(st.loop, []).append((st.queue, out))
            for delta in msg.deltas:
                st = states.get(delta[0])
                if st is not None:
                    by_loop.setdefault(st.loop, []).append((st.queue, delta))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)

    def fail_all(self, message: str) -> None:
        """The scheduler died: every pending request ends with an abort carrying the reason."""
        with self._lock:
            states = list(self._states.values())
        for st in states:
            out = ReqOutput(st.rid, [], FinishReason("abort", message=message, status_code=500),
                            len(st.prompt_ids), len(st.output_ids), 0)
            st.loop.call_soon_threadsafe(st.queue.put_nowait, out)

    @property
    def num_pending(self) -> int:
        return len(self._states)

    # output shaping ---------------------------------------------------------------------------------------------
    def _apply(self, states: dict[str, _State], out: _News) -> None:
        if isinstance(out, tuple):  # new ids and nothing else (ipc.TokenDelta): only streamed requests get these
            st = states[out[0]]
            st.output_ids.extend(out[1])
            if st.stream:
                st.text += st.detok.add(out[1])
            return
        st = states[out.rid]
        st.output_ids.extend(out.new_token_ids)
        fin = out.finished
        if st.stream or fin is not None:
            # NOTE: a request that is not streamed feeds all its ids at its end: one pass of the detokenizer
            # instead of one per step (the concatenated text is the same for any split of the ids)
            feed = out.new_token_ids if st.stream else st.output_ids
            trim_token = fin is not None and fin.type == "stop" and isinstance(fin.matched, int)
            if trim_token and not st.params.no_stop_trim and feed and feed[-1] == fin.matched:  # type: ignore[union-attr]
                feed = feed[:-1]
            st.text += st.detok.add(feed)
        if fin is not None:
            st.text += st.detok.finish()
            if fin.type == "stop" and isinstance(fin.matched, str) and not st.params.no_stop_trim:
                cut = st.text.rfind(fin.matched)
                if cut >= 0:
                    st.text = st.text[:cut]
            st.finished = fin
        st.output_logprobs.extend(out.output_logprobs)
        st.output_top.extend(out.output_top_logprobs)
        if out.input_logprobs is not None:
            st.prompt_logprobs = out.input_logprobs
            st.prompt_top = out.input_top_logprobs or []
        st.cached_tokens = out.cached_tokens
        if out.spec_verify_ct is not None:
            st.spec_verify_ct = out.spec_verify_ct
        if out.embedding is not None:
            st.embedding = out.embedding

    def _visible_text(self, st: _State) -> str:
        """While streaming, hold back a tail that could still become a stop string."""
        if st.finished is not None or not st.params.stop:
            return st.text
        hold = 0
        for s in st.params.stop:  # type: ignore[union-attr]
            for k in range(min(len(s) - 1, len(st.text)), 0, -1):
                if st.text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return st.text[: len(st.text) - hold] if hold else st.text

    def _lp(self, entries: Sequence[tuple[float | None, int]], with_text: bool) -> list[TokenLogprob]:
        decode = self.tokenizer.decode
        return [TokenLogprob(lp, tid, decode([tid], skip_special_tokens=False) if with_text else None)
                for lp, tid in entries]

    def _logprobs(self, st: _State, with_text: bool) -> Logprobs:
        prompt = prompt_top = None
        if st.prompt_logprobs is not None:
            prompt = self._lp(st.prompt_logprobs, with_text)
            prompt_top = [self._lp(x, with_text) for x in st.prompt_top or []]
        return Logprobs(self._lp(st.output_logprobs, with_text), [self._lp(x, with_text) for x in st.output_top],
                        prompt, prompt_top)

    def _result(self, st: _State, req: PreparedRequest) -> GenerateResult:
        meta = MetaInfo(
            id=st.rid, finish_reason=st.finished, prompt_tokens=len(st.prompt_ids),
            completion_tokens=len(st.output_ids), cached_tokens=st.cached_tokens, e2e_latency=time.time() - st.created,
            logprobs=self._logprobs(st, req.return_text_in_logprobs) if req.return_logprob else None,
            spec_verify_ct=st.spec_verify_ct,
        )
        return GenerateResult(self._visible_text(st), list(st.output_ids), meta, st.embedding)


def _put_all(items: list[tuple[asyncio.Queue[_News], _News]]) -> None:
    for queue, out in items:
        queue.put_nowait(out)
