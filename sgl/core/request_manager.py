"""RequestManager: the request front shared by sgl.Engine and the HTTP server.

It validates and tokenizes at the edge, sends typed messages to the scheduler, and turns the scheduler's token
deltas into text (incremental detokenization, stop strings held back while streaming, trimmed at the end).

NOTE: it lives in core, not api, because the offline Engine needs exactly the same edge; api adds HTTP on top.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sgl.core.config import DEFAULT_GRAMMAR_BACKEND
from sgl.core.grammar.manager import check_grammar_request
from sgl.core.ipc import AbortReq, BatchOutput, FinishReason, GenerateReq, ReqOutput
from sgl.core.sampling.params import SamplingParams
from sgl.core.tokenizer.detokenizer import IncrementalDetokenizer
from sgl.core.tokenizer.tokenizer import Tokenizer

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class ModelLimits:
    context_len: int
    vocab_size: int
    max_n: int = 64
    grammar_backend: str = DEFAULT_GRAMMAR_BACKEND  # grammar: ServerArgs.grammar_backend, checked at the edge
    max_total_tokens: int | None = None  # KV pool size: a prompt that cannot fit in it could never be scheduled


@dataclass
class GenerateInput:
    """One generate call: a text or token-id prompt and its options (SGLang's GenerateReqInput, one prompt)."""

    text: str | None = None
    input_ids: list[int] | None = None
    sampling_params: SamplingParams | dict[str, Any] | None = None
    rid: str | None = None
    return_logprob: bool = False
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    lora_path: str | None = None  # a loaded LoRA adapter's name (None: the base model)


@dataclass
class _State:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    detok: IncrementalDetokenizer
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[ReqOutput]
    created: float
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finished: FinishReason | None = None
    first_token_time: float | None = None
    logprobs: dict[str, list[Any]] = field(default_factory=dict)


class RequestManager:
    """Thread-safe: outputs arrive on the scheduler's thread and are handed to each request's own event loop."""

    def __init__(
        self, tokenizer: Tokenizer, limits: ModelLimits, send: Callable[[Any], None],
        on_finish: Callable[[str, ReqOutput, float], None] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.send = send
        self.on_finish = on_finish
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()

    # validation -------------------------------------------------------------------------------------------------
    def tokenize(self, obj: GenerateInput) -> list[int]:
        if obj.input_ids is not None:
            ids = list(obj.input_ids)
            if not ids:
                raise ValueError("input_ids is empty")
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.limits.vocab_size]
            if bad:
                raise ValueError(f"input_ids holds {bad[0]!r}, outside the vocabulary [0, {self.limits.vocab_size})")
            return ids
        if obj.text is None or obj.text == "":
            raise ValueError("the prompt is empty: give text or input_ids")
        if not isinstance(obj.text, str):
            raise ValueError(f"text must be a string, got {type(obj.text).__name__}")
        return self.tokenizer.encode(obj.text)

    def build(self, obj: GenerateInput) -> list[GenerateReq]:
        """Validates one input into one GenerateReq per choice (n > 1 gives siblings sharing a group)."""
        params = obj.sampling_params
        if not isinstance(params, SamplingParams):
            params = SamplingParams.from_dict(params)
        params.validate(self.limits.vocab_size)
        check_grammar_request(params, self.limits.grammar_backend)  # grammar: disabled / not installed / bad spec
        ids = self.tokenize(obj)
        ctx = self.limits.context_len
        if len(ids) >= ctx:
            raise ValueError(f"the prompt has {len(ids)} tokens, but the model's context length is {ctx}")
        if len(ids) + params.max_new_tokens > ctx:
            raise ValueError(
                f"the prompt ({len(ids)} tokens) plus max_new_tokens ({params.max_new_tokens}) exceeds the "
                f"context length {ctx}"
            )
        pool = self.limits.max_total_tokens
        if pool is not None and len(ids) >= pool:
            raise ValueError(f"the prompt has {len(ids)} tokens, but the KV pool holds only {pool} (--max-total-tokens)")
        if params.n > self.limits.max_n:
            raise ValueError(f"n is {params.n}; at most {self.limits.max_n} is allowed")
        start = -1
        if obj.return_logprob and obj.logprob_start_len is not None and obj.logprob_start_len >= 0:
            if obj.logprob_start_len >= len(ids):
                raise ValueError(f"logprob_start_len {obj.logprob_start_len} must be < the prompt length {len(ids)}")
            start = obj.logprob_start_len
        if obj.lora_path is not None and (not isinstance(obj.lora_path, str) or not obj.lora_path):
            raise ValueError(f"lora_path must be an adapter name, got {obj.lora_path!r}")
        top = obj.top_logprobs_num or 0
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs_num must be in [0, {MAX_TOP_LOGPROBS}], got {top}")
        rid = obj.rid or uuid.uuid4().hex
        with self._lock:
            if rid in self._states or any(k.startswith(f"{rid}-") for k in self._states if params.n > 1):
                raise ValueError(f"request id {rid!r} is already in use")
        rids = [rid] if params.n == 1 else [f"{rid}-{i}" for i in range(params.n)]
        return [
            GenerateReq(r, ids, params, obj.return_logprob, start, top, obj.stream, rid if params.n > 1 else None,
                        obj.lora_path)
            for r in rids
        ]

    # running ----------------------------------------------------------------------------------------------------
    async def generate(self, obj: GenerateInput) -> AsyncIterator[list[dict[str, Any]]]:
        """Yields, for each step with news, the cumulative result of every choice (one for n == 1)."""
        reqs = self.build(obj)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ReqOutput] = asyncio.Queue()  # NOTE: one queue for all choices of this call
        states: dict[str, _State] = {}
        with self._lock:
            for req in reqs:
                detok = IncrementalDetokenizer(
                    self.tokenizer, req.input_ids, skip_special_tokens=req.sampling_params.skip_special_tokens
                )
                states[req.rid] = _State(req.rid, req.input_ids, req.sampling_params, detok, loop, queue, time.time())
            self._states.update(states)
        try:
            for req in reqs:
                self.send(req)
            while any(st.finished is None for st in states.values()):
                out = await queue.get()
                self._apply(states[out.rid], out)
                while not queue.empty():
                    out = queue.get_nowait()
                    self._apply(states[out.rid], out)
                done = all(st.finished is not None for st in states.values())
                if obj.stream or done:
                    yield [self._result(st, obj) for st in states.values()]
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

    def on_output(self, msg: Any) -> None:
        """Called on the thread that receives scheduler messages."""
        if not isinstance(msg, BatchOutput):
            return
        with self._lock:
            routed = [(self._states.get(o.rid), o) for o in msg.outputs]
        for st, out in routed:
            if st is not None:
                st.loop.call_soon_threadsafe(st.queue.put_nowait, out)

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
    def _apply(self, st: _State, out: ReqOutput) -> None:
        now = time.time()
        if out.new_token_ids and st.first_token_time is None:
            st.first_token_time = now
        st.output_ids.extend(out.new_token_ids)
        feed = out.new_token_ids
        fin = out.finished
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
        st.logprobs.setdefault("output_token_logprobs", []).extend(out.output_logprobs)
        st.logprobs.setdefault("output_top_logprobs", []).extend(out.output_top_logprobs)
        if out.input_logprobs is not None:
            st.logprobs["input_token_logprobs"] = out.input_logprobs
            st.logprobs["input_top_logprobs"] = out.input_top_logprobs or []
        st.logprobs["cached_tokens"] = [out.cached_tokens]
        if fin is not None and self.on_finish is not None:
            self.on_finish(st.rid, out, now - st.created)

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

    def _lp(self, entries: Sequence[Any], with_text: bool) -> list[list[Any]]:
        return [[lp, tid, self.tokenizer.decode([tid], skip_special_tokens=False) if with_text else None]
                for lp, tid in entries]

    def _result(self, st: _State, obj: GenerateInput) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": st.rid,
            "finish_reason": st.finished.to_dict() if st.finished is not None else None,
            "prompt_tokens": len(st.prompt_ids),
            "completion_tokens": len(st.output_ids),
            "cached_tokens": st.logprobs.get("cached_tokens", [0])[0],
            "e2e_latency": time.time() - st.created,
        }
        if st.finished is not None and st.finished.status_code is not None:
            meta["error_status"] = st.finished.status_code
        if obj.return_logprob:
            t = obj.return_text_in_logprobs
            meta["output_token_logprobs"] = self._lp(st.logprobs.get("output_token_logprobs", []), t)
            meta["output_top_logprobs"] = [self._lp(x, t) for x in st.logprobs.get("output_top_logprobs", [])]
            if "input_token_logprobs" in st.logprobs:
                meta["input_token_logprobs"] = self._lp(st.logprobs["input_token_logprobs"], t)
                meta["input_top_logprobs"] = [self._lp(x, t) for x in st.logprobs["input_top_logprobs"]]
        return {"text": self._visible_text(st), "output_ids": list(st.output_ids), "meta_info": meta}
