"""POST /v1/chat/completions: messages through the model's chat template, answered in OpenAI's exact shapes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, NamedTuple

from sgl.api.errors import ApiError
from sgl.api.lora_routes import adapter_of
from sgl.api.openai_common import Cursor, chat_logprobs, finish_reason, now, sampling_params, usage_of
from sgl.api.openai_protocol import ChatCompletionRequest, ChatMessage
from sgl.api.reasoning import Thinking
from sgl.api.state import ServerState
from sgl.api.streaming import DONE, SSEResponse, sse
from sgl.api.tool_calls.request import ToolPlan, plan_tools, template_message
from sgl.api.tool_calls.stream import ToolStream
from sgl.core.replies import SchedulerUnavailable
from sgl.core.request_input import REST_OF_CONTEXT
from sgl.core.request_manager import GenerateInput, PreparedRequest
from sgl.core.request_result import GenerateResult, MetaInfo
from sgl.core.sampling.params import CONSTRAINT_FIELDS

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


def _template_kwargs(req: ChatCompletionRequest) -> tuple[bool, dict[str, Any]]:
    kwargs = dict(req.chat_template_kwargs or {})
    kwargs.pop("tokenize", None)  # NOTE: the route tokenizes the rendered text itself
    return bool(kwargs.pop("add_generation_prompt", True)), kwargs


class ChatInput(NamedTuple):
    prepared: PreparedRequest
    tools: ToolPlan | None  # None: no tool calling (no tools, or tool_choice none)
    thinking: Thinking | None  # None: no reasoning split


def _thinking(state: ServerState, req: ChatCompletionRequest, kwargs: dict[str, Any]) -> Thinking | None:
    """The request's reasoning split, where the server has a --reasoning-parser and the template lets the model think."""
    parser = state.reasoning_parser
    if parser is None or not parser.thinks(kwargs):
        return None
    return Thinking(parser, stream=req.stream_reasoning is not False)


async def build_chat_input(state: ServerState, req: ChatCompletionRequest) -> ChatInput:
    """The validated, tokenized request, its tool plan and reasoning split; every client mistake raises ApiError or
    ValueError (both 400).

    NOTE: templating and tokenizing a long conversation run off the event loop (TokenizerManager.run).
    """
    tm = state.tm
    tm.check_alive()
    if req.top_logprobs and not req.logprobs:
        raise ApiError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
    sampling = sampling_params(req)
    if req.requested_max_tokens is not None:
        sampling["max_new_tokens"] = req.requested_max_tokens
    plan, tools = plan_tools(state.tool_parser, req.tools, req.tool_choice, req.parallel_tool_calls, sampling)
    messages = [template_message(_message_dict(m), i) for i, m in enumerate(req.messages)]
    add_generation_prompt, kwargs = _template_kwargs(req)
    if tools is not None:
        kwargs["tools"] = tools
    thinking = _thinking(state, req, kwargs)
    # NOTE: the model thinks freely; response_format and a forced tool call apply after the section. SGLang's raw
    # constraint extras (regex, ebnf, json_schema) say what the whole output is, so they stay as given.
    if thinking is not None and not any(getattr(req, k, None) is not None for k in CONSTRAINT_FIELDS):
        thinking.constrain_after(sampling)
    if req.separate_reasoning is False:
        thinking = None
    options: dict[str, Any] = {
        "sampling_params": sampling, "rid": req.rid, "return_logprob": bool(req.logprobs),
        "top_logprobs_num": req.top_logprobs or 0, "return_text_in_logprobs": True, "stream": bool(req.stream),
        "default_max_new_tokens": REST_OF_CONTEXT, "max_tokens_name": req.max_tokens_name,
        "lora_path": adapter_of(state, req.model, req.lora_path),
    }

    def prepare() -> PreparedRequest:
        if req.input_ids is not None:
            return tm.manager.prepare(GenerateInput(input_ids=req.input_ids, **options))
        text = tm.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        assert isinstance(text, str)
        return tm.manager.prepare(GenerateInput(text=text, add_special_tokens=False, **options))

    size = len(req.input_ids) if req.input_ids is not None else sum(len(str(m.get("content", ""))) for m in messages)
    prepared = await tm.run(prepare, size)
    if state.args.log_requests:
        logger.info("chat request %s: %d prompt tokens, n=%d, max_tokens=%d, user=%s", prepared.rid,
                    len(prepared.prompt_ids), prepared.n, prepared.params.max_new_tokens, req.user)
    return ChatInput(prepared, plan, thinking)


def _choice_logprobs(req: ChatCompletionRequest, meta: MetaInfo, start: int = 0,
                     end: int | None = None) -> dict[str, Any] | None:
    if not req.logprobs or meta.logprobs is None:
        return None
    lp = meta.logprobs
    return {"content": chat_logprobs(lp.output[start:end], lp.output_top[start:end], req.top_logprobs or 0),
            "refusal": None}


async def chat_completion(state: ServerState, req: ChatCompletionRequest) -> dict[str, Any] | SSEResponse:
    obj, plan, thinking = await build_chat_input(state, req)
    n = obj.n
    rid = f"chatcmpl-{obj.rid}"
    if obj.stream:
        return SSEResponse(_stream(state, req, obj, n, rid, plan, thinking))
    final: list[GenerateResult] = []
    async with aclosing(state.tm.generate(obj)) as results:
        async for final in results:
            pass
    choices = []
    for j, r in enumerate(final):
        reason = finish_reason(state, r.meta)
        reasoning, text = thinking.parser.split(r.text, final=True) if thinking is not None else ("", r.text)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if plan is not None:
            message, called = plan.message(text)
            reason = "tool_calls" if called and reason == "stop" else reason
        if thinking is not None:
            message["reasoning_content"] = reasoning or None
            if not message["content"] and reasoning:
                message["content"] = None
        choices.append({"index": j, "message": message, "logprobs": _choice_logprobs(req, r.meta),
                        "finish_reason": reason})
    return {"id": rid, "object": "chat.completion", "created": now(), "model": state.served_model_name,
            "choices": choices, "usage": usage_of(final, n)}


async def _stream(
    state: ServerState, req: ChatCompletionRequest, obj: PreparedRequest, n: int, rid: str, plan: ToolPlan | None,
    thinking: Thinking | None,
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
    tool_streams = [ToolStream(plan) for _ in range(n)] if plan is not None else None
    thought = [0] * n  # reasoning characters streamed, per choice
    final: list[GenerateResult] = []
    try:
        async with aclosing(state.tm.generate(obj)) as results:
            async for final in results:
                for j, r in enumerate(final):
                    c, meta = cursors[j], r.meta
                    if c.finished:
                        continue
                    reason = finish_reason(state, meta)
                    if not c.started:
                        c.started = True
                        yield chunk(j, {"role": "assistant", "content": ""})
                    text = r.text
                    if thinking is not None:
                        reasoning, text = thinking.parser.split(r.text, final=reason is not None)
                        # NOTE: stream_reasoning false: the whole section in one delta, once it ends
                        if len(reasoning) > thought[j] and (thinking.stream or text or reason is not None):
                            yield chunk(j, {"reasoning_content": reasoning[thought[j]:]})
                            thought[j] = len(reasoning)
                    delta = c.text_delta(text)
                    lp = None
                    if req.logprobs and meta.logprobs is not None:
                        start, end = c.logprob_delta(meta.logprobs.output)
                        lp = _choice_logprobs(req, meta, start, end) if end > start else None
                    if tool_streams is not None:
                        ts = tool_streams[j]
                        for k, d in enumerate(ts.deltas(text, final=reason is not None)):
                            yield chunk(j, d, logprobs=lp if k == 0 else None)
                            lp = None
                        if lp is not None:
                            yield chunk(j, {"content": ""}, logprobs=lp)
                        if reason == "stop" and ts.called:
                            reason = "tool_calls"
                    elif delta or lp is not None:
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
