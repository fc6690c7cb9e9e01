"""POST /v1/chat/completions: messages through the model's chat template, answered in OpenAI's exact shapes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from sgl.api.errors import ApiError
from sgl.api.lora_routes import adapter_of
from sgl.api.openai_common import Cursor, chat_logprobs, finish_reason, now, sampling_params, usage_of
from sgl.api.openai_protocol import ChatCompletionRequest, ChatMessage
from sgl.api.state import ServerState
from sgl.api.streaming import DONE, SSEResponse, sse
from sgl.api.tool_calls.request import ToolPlan, plan_tools, template_message
from sgl.api.tool_calls.stream import ToolStream
from sgl.core.replies import SchedulerUnavailable
from sgl.core.request_input import REST_OF_CONTEXT
from sgl.core.request_manager import GenerateInput, PreparedRequest
from sgl.core.request_result import GenerateResult, MetaInfo

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


async def build_chat_input(state: ServerState, req: ChatCompletionRequest) -> tuple[PreparedRequest, ToolPlan | None]:
    """The validated, tokenized request and its tool plan; every client mistake raises ApiError or ValueError (400).

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
    return prepared, plan


def _choice_logprobs(req: ChatCompletionRequest, meta: MetaInfo, start: int = 0,
                     end: int | None = None) -> dict[str, Any] | None:
    if not req.logprobs or meta.logprobs is None:
        return None
    lp = meta.logprobs
    return {"content": chat_logprobs(lp.output[start:end], lp.output_top[start:end], req.top_logprobs or 0),
            "refusal": None}


async def chat_completion(state: ServerState, req: ChatCompletionRequest) -> dict[str, Any] | SSEResponse:
    obj, plan = await build_chat_input(state, req)
    n = obj.n
    rid = f"chatcmpl-{obj.rid}"
    if obj.stream:
        return SSEResponse(_stream(state, req, obj, n, rid, plan))
    final: list[GenerateResult] = []
    async with aclosing(state.tm.generate(obj)) as results:
        async for final in results:
            pass
    choices = []
    for j, r in enumerate(final):
        reason = finish_reason(state, r.meta)
        message: dict[str, Any] = {"role": "assistant", "content": r.text, "refusal": None}
        if plan is not None:
            message, called = plan.message(r.text)
            reason = "tool_calls" if called and reason == "stop" else reason
        choices.append({"index": j, "message": message, "logprobs": _choice_logprobs(req, r.meta),
                        "finish_reason": reason})
    return {"id": rid, "object": "chat.completion", "created": now(), "model": state.served_model_name,
            "choices": choices, "usage": usage_of(final, n)}


async def _stream(
    state: ServerState, req: ChatCompletionRequest, obj: PreparedRequest, n: int, rid: str, plan: ToolPlan | None
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
                    delta = c.text_delta(r.text)
                    lp = None
                    if req.logprobs and meta.logprobs is not None:
                        start, end = c.logprob_delta(meta.logprobs.output)
                        lp = _choice_logprobs(req, meta, start, end) if end > start else None
                    if tool_streams is not None:
                        ts = tool_streams[j]
                        for k, d in enumerate(ts.deltas(r.text, final=reason is not None)):
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
