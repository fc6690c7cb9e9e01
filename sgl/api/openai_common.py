"""What both OpenAI generation routes share: sampling params, finish reasons, usage, logprob shapes, choice cursors."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sgl.api.errors import ApiError
from sgl.api.openai_protocol import _SamplingFields
from sgl.api.state import ServerState
from sgl.core.request_result import GenerateResult, MetaInfo, TokenLogprob
from sgl.core.sampling.params import CONSTRAINT_FIELDS


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def response_format_constraint(fmt: dict[str, Any] | None) -> dict[str, str]:
    """OpenAI's response_format as a sampling constraint: json_object is any JSON object; json_schema its schema."""
    kind = (fmt or {}).get("type")
    if kind in (None, "text"):
        return {}
    if kind == "json_object":
        return {"json_schema": json.dumps({"type": "object"})}
    if kind == "json_schema":
        spec = (fmt or {}).get("json_schema")
        if not isinstance(spec, dict):
            raise ApiError(400, "response_format.json_schema must be an object with a 'schema' object",
                           param="response_format.json_schema")
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            # NOTE: without a schema there is nothing to constrain to; answering unconstrained would break the promise
            raise ApiError(400, "response_format.json_schema.schema must be a JSON Schema object"
                           + (" (it is missing)" if schema is None else ""),
                           param="response_format.json_schema.schema")
        return {"json_schema": json.dumps(schema)}
    raise ApiError(400, f"response_format type {kind!r} is not supported (text, json_object, json_schema)",
                   param="response_format")


def sampling_params(req: _SamplingFields) -> dict[str, Any]:
    """The request's native sampling params, its response_format included (at most one constraint in all)."""
    sampling = req.sampling_dict()
    constraint = response_format_constraint(req.response_format)
    if constraint:
        given = [k for k in CONSTRAINT_FIELDS if sampling.get(k) is not None]
        if given:
            raise ApiError(400, f"give either response_format or {given[0]}, not both", param="response_format")
        sampling.update(constraint)
    return sampling


def abort_error(state: ServerState, meta: MetaInfo) -> ApiError:
    """An aborted choice is an error, never a finish_reason: its status comes from the abort, else the situation."""
    reason = meta.finish_reason
    message = (reason.message if reason is not None else None) or "the request was aborted"
    status = meta.error_status
    if status is None:
        status = 503 if state.phase == "draining" else 400
        if status == 503:
            message = "the server is shutting down; the request was aborted"
    return ApiError(int(status), message, code="request_aborted")


def finish_reason(state: ServerState, meta: MetaInfo) -> str | None:
    """'stop' | 'length' | None (still running); raises ApiError for an abort."""
    reason = meta.finish_reason
    if reason is None:
        return None
    if reason.type == "abort":
        raise abort_error(state, meta)
    return "length" if reason.type == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


def usage_of(results: list[GenerateResult], n: int) -> dict[str, Any]:
    """Prompt tokens count once per prompt (its n choices share it); completion tokens count for every choice."""
    metas = [r.meta for r in results]
    prompt = sum(m.prompt_tokens for i, m in enumerate(metas) if i % n == 0)
    cached = sum(m.cached_tokens for i, m in enumerate(metas) if i % n == 0)
    return usage(prompt, sum(m.completion_tokens for m in metas), cached)


def _token_text(entry: TokenLogprob) -> str:
    return entry.text or ""


def chat_logprobs(tokens: Sequence[TokenLogprob], tops: Sequence[list[TokenLogprob]],
                  top_n: int) -> list[dict[str, Any]]:
    """OpenAI chat logprob entries from SGLang's (logprob, id, text) entries."""
    out = []
    for i, entry in enumerate(tokens):
        text = _token_text(entry)
        alts = tops[i] if i < len(tops) else []
        out.append({
            "token": text, "logprob": float(entry.logprob or 0.0), "bytes": list(text.encode("utf-8")),
            "top_logprobs": [
                {"token": _token_text(a), "logprob": float(a.logprob or 0.0),
                 "bytes": list(_token_text(a).encode("utf-8"))}
                for a in alts[:top_n]
            ],
        })
    return out


def legacy_logprobs(
    tokens: Sequence[TokenLogprob], tops: Sequence[list[TokenLogprob]], start_offset: int,
    hidden: frozenset[int] = frozenset(),
) -> dict[str, Any]:
    """The completions API's {tokens, token_logprobs, top_logprobs, text_offset}.

    NOTE: an entry without a logprob (the first prompt token under echo) is left out: OpenAI's typed client
    rejects the null OpenAI itself would send there. Tokens in ``hidden`` (special tokens the text skips) take no
    characters of the text, so the offsets of the others stay right.
    """
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = start_offset
    for i, entry in enumerate(tokens):
        text = _token_text(entry)
        if entry.logprob is not None:
            alts = tops[i] if i < len(tops) and tops[i] else []
            out["tokens"].append(text)
            out["token_logprobs"].append(float(entry.logprob))
            out["top_logprobs"].append({_token_text(a): float(a.logprob or 0.0) for a in alts})
            out["text_offset"].append(offset)
        if entry.token_id not in hidden:
            offset += len(text)
    return out


@dataclass
class Cursor:
    """What one choice already streamed: text characters, logprob entries, and whether it has finished."""

    text: int = 0
    logprobs: int = 0
    started: bool = False
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def text_delta(self, text: str) -> str:
        # NOTE: the visible text only grows while streaming (stop strings are held back, not retracted).
        delta = text[self.text:]
        self.text = max(self.text, len(text))
        return delta

    def logprob_delta(self, entries: Sequence[Any]) -> tuple[int, int]:
        start, self.logprobs = self.logprobs, len(entries)
        return start, len(entries)
