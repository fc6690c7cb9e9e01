"""Typed messages between the request front (tokenizer side) and the scheduler, and their transports.

Messages are plain dataclasses so that any transport can carry them: an in-process queue for ``sgl.Engine``, a
multiprocessing connection (pickle) between the API process and the scheduler process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sgl.core.sampling.params import SamplingParams


@dataclass(frozen=True)
class FinishReason:
    """Why a request ended: ``stop`` (EOS, stop token or stop string), ``length``, or ``abort``."""

    type: str
    matched: int | str | None = None
    message: str | None = None
    status_code: int | None = None  # for aborts the edge should turn into an HTTP error (400 ...)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "matched": self.matched}
        if self.message is not None:
            d["message"] = self.message
        return d


# front -> scheduler -------------------------------------------------------------------------------------------
@dataclass
class GenerateReq:
    """A validated, tokenized request. The scheduler trusts it."""

    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no prompt logprobs
    top_logprobs_num: int = 0
    stream: bool = False
    group: str | None = None  # siblings of one n > 1 request share a group and their prompt's KV
    lora_path: str | None = None  # the name of a loaded LoRA adapter; None runs the base model
    pooling: str | None = None  # "last" | "mean": an embedding request (prompt only; the pooled hidden state back)


@dataclass(frozen=True)
class FeatureCallReq:
    """A control operation for one scheduler feature (load a LoRA adapter); answered by an InfoResp with ``token``.

    The reply's info holds the feature's result, or ``{"error": message}`` when it refused."""

    token: int
    feature: str
    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AbortReq:
    rid: str


@dataclass(frozen=True)
class FlushCacheReq:
    pass


@dataclass(frozen=True)
class GetInfoReq:
    token: int = 0


@dataclass(frozen=True)
class ShutdownReq:
    pass


# scheduler -> front -------------------------------------------------------------------------------------------
@dataclass
class ReqOutput:
    """What one request produced in one step; token ids and logprobs are deltas since the previous output."""

    rid: str
    new_token_ids: list[int]
    finished: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    output_logprobs: list[tuple[float, int]] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    input_logprobs: list[tuple[float | None, int]] | None = None
    input_top_logprobs: list[list[tuple[float, int]]] | None = None
    spec_verify_ct: int | None = None  # decode steps taken under speculative decoding (None: speculation off)
    embedding: list[float] | None = None  # an embedding request's normalized pooled vector, with its end

    def __reduce__(self) -> tuple[type[ReqOutput], tuple[Any, ...]]:
        # NOTE: pickled as constructor arguments, not a class lookup plus a __dict__: the API process unpickles
        # one per streaming request per step, and this made loading them ~4x cheaper (and the pickle ~30% smaller)
        return (ReqOutput, (self.rid, self.new_token_ids, self.finished, self.prompt_tokens, self.completion_tokens,
                            self.cached_tokens, self.output_logprobs, self.output_top_logprobs, self.input_logprobs,
                            self.input_top_logprobs, self.spec_verify_ct, self.embedding))


# A streamed request's step that changed nothing but its output: (rid, the new token ids). Its prompt and cached
# counts are those of its last ReqOutput, its completion count grows by the new ids; it never ends a request.
# NOTE: a plain tuple, not a ReqOutput: at 330 streamed requests, taking, pickling and sending one step's outputs
# cost the scheduler loop 1.63 ms as ReqOutputs, 0.28 ms as deltas (2-core Xeon); unpickling them in the API
# process 0.29 ms vs 0.07 ms. The offline engine's requests are not streamed, so only the server paid this.
TokenDelta = tuple[str, list[int]]


@dataclass
class BatchOutput:
    """One step's news: ``outputs`` for what needs the whole record (a first token, an end, logprobs, a changed
    count), ``deltas`` for every other streamed request that got new tokens (see TokenDelta)."""

    outputs: list[ReqOutput]
    deltas: list[TokenDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.outputs or self.deltas)


@dataclass(frozen=True)
class FlushCacheResp:
    ok: bool
    message: str = ""


@dataclass
class InfoResp:
    token: int
    info: dict[str, Any]


@dataclass(frozen=True)
class SchedulerReady:
    info: dict[str, Any]


@dataclass(frozen=True)
class SchedulerFailed:
    message: str


class Inbox:
    """A thread-safe queue the scheduler drains: non-blocking while busy, blocking while idle."""

    def __init__(self) -> None:
        self._q: queue.Queue[Any] = queue.Queue()

    def put(self, msg: Any) -> None:
        self._q.put(msg)

    def drain(self, block: bool, timeout: float | None = None) -> list[Any]:
        items: list[Any] = []
        try:
            if block:
                items.append(self._q.get(timeout=timeout))
            while True:
                items.append(self._q.get_nowait())
        except queue.Empty:
            pass
        return items


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    return t
