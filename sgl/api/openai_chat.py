"""POST /v1/chat/completions: messages through the model's chat template, answered in OpenAI's exact shapes."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from sgl.api.errors import ApiError
from sgl.api.openai_common import (
    Cursor,
    chat_logprobs,
    check_n,
    finish_reason,
    now,
    resolve_max_tokens,
    usage_of,
)
from sgl.api.openai_protocol import ChatCompletionRequest, ChatMessage
from sgl.api.state import ServerState
from sgl.api.streaming import DONE, SSEResponse, sse
from sgl.api.tokenizer_manager import SchedulerUnavailable
from sgl.core.request_manager import GenerateInput

logger = logging.getLogger(__name__)


def _message_dict(m: ChatMessage) -> dict[str, Any]:
    d = m.model_dump(exclude_none=True)
    if isinstance(m.content, list):
        texts = []
        for part in m.content:
            if part.type != "text" or part.text is None:
                raise ApiError(400, f"content parts of type {part.type!r} are not supported; only 'text' is",
                               param="messages")
            texts.append(part.text)
        d["content"] = "\n".join(texts)
    elif m.content is None:
        d["content"] = ""
    return d


def response_format_constraint(fmt: dict[str, Any] | None) -> dict[str, str]:
    """OpenAI's response_format as a sampling constraint: json_object is any JSON object; json_schema its schema."""
    kind = (fmt or {}).get("type")
    if kind in (None, "text"):
        return {}
    if kind == "json_object":
        return {"json_schema": json.dumps({"type": "object"})}
    if kind == "json_schema":
        spec = (fmt or {}).get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ApiError(400, "response_format.json_schema must be an object with a 'schema' object",
                           param="response_format")
        return {"json_schema": json.dumps(spec.get("schema", {}))}
    raise ApiError(400, f"response_format type {kind!r} is not supported (text, json_object, json_schema)",
                   param="response_format")


def build_chat_input(state: ServerState, req: ChatCompletionRequest) -> tuple[GenerateInput, int]:
    """Validated input and its n; every client mistake raises ApiError or ValueError (both 400)."""
    tm = state.tm
    tm.check_alive()
    constraint = response_format_constraint(req.response_format)
    if req.top_logprobs and not req.logprobs:
        raise ApiError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
    n = check_n(state, req.n)
    kwargs = dict(req.chat_template_kwargs or {})
    add_generation_prompt = bool(kwargs.pop("add_generation_prompt", True))
    ids = tm.tokenizer.apply_chat_template(
        [_message_dict(m) for m in req.messages], add_generation_prompt=add_generation_prompt, tokenize=True,
        **kwargs,
    )
    assert isinstance(ids, list)
    sampling = req.sampling_dict(resolve_max_tokens(state, req.requested_max_tokens, len(ids)))
    sampling["n"] = n
    if constraint:
        if any(sampling.get(k) is not None for k in ("json_schema", "regex", "ebnf", "choices")):
            raise ApiError(400, "give either response_format or a json_schema/regex/ebnf constraint, not both",
                           param="response_format")
        sampling.update(constraint)
    obj = GenerateInput(
        input_ids=ids, sampling_params=sampling, rid=req.rid or uuid.uuid4().hex,
        return_logprob=bool(req.logprobs), top_logprobs_num=req.top_logprobs or 0, return_text_in_logprobs=True,
        stream=bool(req.stream),
    )
    tm.validate(obj)
    if state.args.log_requests:
        logger.info("chat request %s: %d prompt tokens, n=%d, max_tokens=%d, user=%s",
                    obj.rid, len(ids), n, sampling["max_new_tokens"], req.user)
    return obj, n


def _choice_logprobs(req: ChatCompletionRequest, meta: dict[str, Any], start: int = 0,
                     end: int | None = None) -> dict[str, Any] | None:
    if not req.logprobs:
        return None
    tokens = meta.get("output_token_logprobs", [])[start:end]
    tops = meta.get("output_top_logprobs", [])[start:end]
    return {"content": chat_logprobs(tokens, tops, req.top_logprobs or 0), "refusal": None}


async def chat_completion(state: ServerState, req: ChatCompletionRequest) -> dict[str, Any] | SSEResponse:
    obj, n = build_chat_input(state, req)
    rid = f"chatcmpl-{obj.rid}"
    if obj.stream:
        return SSEResponse(_stream(state, req, obj, n, rid))
    final: list[dict[str, Any]] = []
    async with aclosing(state.tm.generate(obj)) as results:
        async for final in results:
            pass
    choices = []
    for j, r in enumerate(final):
        choices.append({
            "index": j, "message": {"role": "assistant", "content": r["text"], "refusal": None},
            "logprobs": _choice_logprobs(req, r["meta_info"]),
            "finish_reason": finish_reason(state, r["meta_info"]),
        })
    return {"id": rid, "object": "chat.completion", "created": now(), "model": state.served_model_name,
            "choices": choices, "usage": usage_of(final, n)}


async def _stream(
    state: ServerState, req: ChatCompletionRequest, obj: GenerateInput, n: int, rid: str
) -> AsyncIterator[str]:
    created, model = now(), state.served_model_name
    include_usage = req.include_usage

    def chunk(index: int, delta: dict[str, Any], reason: str | None = None,
              logprobs: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {
            "id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}],
        }
        if include_usage:
            body["usage"] = None
        return sse(body)

    cursors = [Cursor() for _ in range(n)]
    final: list[dict[str, Any]] = []
    try:
        async with aclosing(state.tm.generate(obj)) as results:
            async for final in results:
                for j, r in enumerate(final):
                    c, meta = cursors[j], r["meta_info"]
                    if c.finished:
                        continue
                    reason = finish_reason(state, meta)
                    if not c.started:
                        c.started = True
                        yield chunk(j, {"role": "assistant", "content": ""})
                    delta = c.text_delta(r["text"])
                    lp = None
                    if req.logprobs:
                        start, end = c.logprob_delta(meta.get("output_token_logprobs", []))
                        lp = _choice_logprobs(req, meta, start, end) if end > start else None
                    if delta or lp is not None:
                        yield chunk(j, {"content": delta}, logprobs=lp)
                    if reason is not None:
                        c.finished = True
                        yield chunk(j, {}, reason)
        if include_usage:
            yield sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": usage_of(final, n)})
    except ApiError as exc:
        yield sse(exc.body())
    except SchedulerUnavailable as exc:
        yield sse(ApiError(500, str(exc)).body())
    yield DONE
