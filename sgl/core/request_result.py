"""What a generate call gives back, as typed values; ``to_dict`` is SGLang's public shape (text, output_ids,
meta_info) that sgl.Engine returns and /generate sends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from sgl.core.ipc import FinishReason


class TokenLogprob(NamedTuple):
    """SGLang's (logprob, token_id, text); text is None unless asked for; a prompt's first token has no logprob."""

    logprob: float | None
    token_id: int
    text: str | None


@dataclass(frozen=True)
class Logprobs:
    """Output logprobs (and their top alternatives) so far; prompt logprobs when logprob_start_len asked for them."""

    output: list[TokenLogprob]
    output_top: list[list[TokenLogprob]]
    prompt: list[TokenLogprob] | None = None
    prompt_top: list[list[TokenLogprob]] | None = None


@dataclass(frozen=True)
class MetaInfo:
    id: str
    finish_reason: FinishReason | None  # None while the choice is still running
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    e2e_latency: float
    logprobs: Logprobs | None = None  # present when the request asked for logprobs
    spec_verify_ct: int | None = None  # decode steps under speculative decoding (SGLang's name); None: it is off

    @property
    def error_status(self) -> int | None:
        """The HTTP status an abort asks the edge to answer with (None: not an error the request caused)."""
        return self.finish_reason.status_code if self.finish_reason is not None else None

    @property
    def aborted(self) -> bool:
        return self.finish_reason is not None and self.finish_reason.type == "abort"

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": self.id,
            "finish_reason": self.finish_reason.to_dict() if self.finish_reason is not None else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "e2e_latency": self.e2e_latency,
        }
        if self.error_status is not None:
            meta["error_status"] = self.error_status
        if self.spec_verify_ct is not None:
            meta["spec_verify_ct"] = self.spec_verify_ct
        lp = self.logprobs
        if lp is not None:
            meta["output_token_logprobs"] = lp.output
            meta["output_top_logprobs"] = lp.output_top
            if lp.prompt is not None:
                meta["input_token_logprobs"] = lp.prompt
                meta["input_top_logprobs"] = lp.prompt_top or []
        return meta


@dataclass(frozen=True)
class GenerateResult:
    """One choice's cumulative result: while streaming, text holds back a tail that may still become a stop string."""

    text: str
    output_ids: list[int]
    meta: MetaInfo
    embedding: list[float] | None = None  # an embedding request's normalized pooled vector

    @property
    def finished(self) -> bool:
        return self.meta.finish_reason is not None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "output_ids": list(self.output_ids), "meta_info": self.meta.to_dict()}
