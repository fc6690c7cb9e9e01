"""What both OpenAI generation routes share: limits, finish reasons, usage, logprob shapes, choice cursors."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sgl.api.errors import ApiError
from sgl.api.state import ServerState

MAX_TOP_LOGPROBS = 20


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def resolve_max_tokens(state: ServerState, requested: int | None, prompt_len: int) -> int:
    """Omitted: the rest of the context, capped by --max-new-tokens-limit. Given: checked against that cap."""
    cap = state.args.max_new_tokens_limit
    if requested is None:
        remaining = max(state.tm.limits.context_len - prompt_len, 0)
        return min(remaining, cap) if cap is not None else remaining
    if cap is not None and requested > cap:
        raise ApiError(400, f"max_tokens is {requested}; at most {cap} is allowed (--max-new-tokens-limit)",
                       param="max_tokens")
    return requested


def check_n(state: ServerState, n: int | None) -> int:
    n = 1 if n is None else n
    if n > state.args.max_n:
        raise ApiError(400, f"n is {n}; at most {state.args.max_n} is allowed (--max-n)", param="n")
    return n


def abort_error(state: ServerState, meta: dict[str, Any]) -> ApiError:
    """An aborted choice is an error, never a finish_reason: its status comes from the abort, else the situation."""
    reason = meta.get("finish_reason") or {}
    message = reason.get("message") or "the request was aborted"
    status = meta.get("error_status")
    if status is None:
        status = 503 if state.phase == "draining" else 400
        if status == 503:
            message = "the server is shutting down; the request was aborted"
    return ApiError(int(status), message, code="request_aborted")


def finish_reason(state: ServerState, meta: dict[str, Any]) -> str | None:
    """'stop' | 'length' | None (still running); raises ApiError for an abort."""
    reason = meta.get("finish_reason")
    if reason is None:
        return None
    kind = reason.get("type")
    if kind == "abort":
        raise abort_error(state, meta)
    return "length" if kind == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


def usage_of(results: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Prompt tokens count once per prompt (its n choices share it); completion tokens count for every choice."""
    metas = [r["meta_info"] for r in results]
    prompt = sum(m["prompt_tokens"] for i, m in enumerate(metas) if i % n == 0)
    cached = sum(m.get("cached_tokens", 0) for i, m in enumerate(metas) if i % n == 0)
    return usage(prompt, sum(m["completion_tokens"] for m in metas), cached)


def _token_text(entry: list[Any]) -> str:
    return str(entry[2]) if len(entry) > 2 and entry[2] is not None else ""


def chat_logprobs(tokens: list[list[Any]], tops: list[list[list[Any]]], top_n: int) -> list[dict[str, Any]]:
    """OpenAI chat logprob entries from SGLang's [[logprob, id, text], ...] lists."""
    out = []
    for i, entry in enumerate(tokens):
        text = _token_text(entry)
        alts = tops[i] if i < len(tops) else []
        out.append({
            "token": text, "logprob": float(entry[0]), "bytes": list(text.encode("utf-8")),
            "top_logprobs": [
                {"token": _token_text(a), "logprob": float(a[0]), "bytes": list(_token_text(a).encode("utf-8"))}
                for a in alts[:top_n]
            ],
        })
    return out


def legacy_logprobs(
    tokens: list[list[Any]], tops: list[list[list[Any]]], start_offset: int, hidden: frozenset[int] = frozenset()
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
        if entry[0] is not None:
            alts = tops[i] if i < len(tops) and tops[i] else []
            out["tokens"].append(text)
            out["token_logprobs"].append(float(entry[0]))
            out["top_logprobs"].append({_token_text(a): float(a[0]) for a in alts})
            out["text_offset"].append(offset)
        if entry[1] not in hidden:
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

    def logprob_delta(self, entries: list[Any]) -> tuple[int, int]:
        start, self.logprobs = self.logprobs, len(entries)
        return start, len(entries)
