"""POST /v1/completions: text or token-id prompts (one or a list), echo and legacy logprobs, in OpenAI's shapes.

Choice ``index`` is ``prompt_index * n + j``, as OpenAI numbers the choices of a list of prompts. Without
``max_tokens`` a completion has at most 16 tokens, as OpenAI's and SGLang's do.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from sgl.api.completion_chunks import CompletionChunks
from sgl.api.errors import ApiError
from sgl.api.lora_routes import adapter_of
from sgl.api.openai_common import Cursor, finish_reason, legacy_logprobs, now, sampling_params, usage_of
from sgl.api.openai_protocol import CompletionRequest
from sgl.api.state import ServerState
from sgl.api.streaming import DONE, SSEResponse, merge, sse
from sgl.core.replies import SchedulerUnavailable
from sgl.core.request_manager import GenerateInput, PreparedRequest
from sgl.core.request_result import GenerateResult, MetaInfo, TokenLogprob
from sgl.core.tokenizer.detokenizer import IncrementalDetokenizer

logger = logging.getLogger(__name__)


COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's and SGLang's default for /v1/completions


@dataclass(frozen=True)
class PromptInput:
    req: PreparedRequest
    echo_text: str  # the prompt as text ("" without echo)


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise ApiError(400, "prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


async def build_completion_inputs(state: ServerState, req: CompletionRequest) -> tuple[list[PromptInput], int]:
    """Validates every prompt before any is sent: a bad prompt in a list rejects the whole request.

    NOTE: tokenizing long prompts runs off the event loop (TokenizerManager.run).
    """
    tm = state.tm
    tm.check_alive()
    if req.suffix:
        raise ApiError(400, "suffix is not supported", param="suffix")
    n = 1 if req.n is None else req.n
    if req.best_of is not None and req.best_of != n:
        raise ApiError(400, "best_of is not supported (only best_of == n)", param="best_of")
    sampling = sampling_params(req)
    if req.max_tokens is not None:
        sampling["max_new_tokens"] = req.max_tokens
    base = req.rid or uuid.uuid4().hex
    prompts = _prompts(req.prompt)
    want_lp = req.logprobs is not None
    skip_special = req.skip_special_tokens is not False

    def prepare(i: int, p: str | list[int]) -> PromptInput:
        if isinstance(p, str) and not p:
            raise ApiError(400, "the prompt is empty", param="prompt")
        obj = GenerateInput(
            text=p if isinstance(p, str) else None, input_ids=None if isinstance(p, str) else p,
            sampling_params=sampling, rid=base if len(prompts) == 1 else f"{base}_{i}", return_logprob=want_lp,
            logprob_start_len=0 if (want_lp and req.echo) else None, top_logprobs_num=req.logprobs or 0,
            return_text_in_logprobs=True, stream=bool(req.stream),
            default_max_new_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS, max_tokens_name="max_tokens",
            lora_path=adapter_of(state, req.model, req.lora_path),
        )
        prepared = tm.manager.prepare(obj)
        if not req.echo:
            return PromptInput(prepared, "")
        echo = p if isinstance(p, str) else tm.tokenizer.decode(prepared.prompt_ids, skip_special_tokens=skip_special)
        return PromptInput(prepared, echo)

    out = []
    for i, p in enumerate(prompts):
        out.append(await tm.run(lambda i=i, p=p: prepare(i, p), len(p)))  # type: ignore[misc]
    if state.args.log_requests:
        logger.info("completion request %s: %d prompt(s), n=%d, user=%s", base, len(out), n, req.user)
    return out, n


def _logprobs(req: CompletionRequest, meta: MetaInfo, with_prompt: bool, hidden_ids: set[int],
              detok: IncrementalDetokenizer, start: int = 0, end: int | None = None,
              offset: int = 0) -> dict[str, Any] | None:
    """The legacy logprobs of output entries [start:end] (and the prompt's, under echo).

    NOTE: a generated token's string is the text it adds (``detok``, fed in order across stream chunks), so the
    tokens add up to the text even where a character spans two tokens; a top alternative is decoded alone."""
    if req.logprobs is None or meta.logprobs is None:
        return None
    lp = meta.logprobs
    tokens = [TokenLogprob(e.logprob, e.token_id, detok.add([e.token_id])) for e in lp.output[start:end]]
    if tokens and meta.finish_reason is not None and end is None:
        last = tokens[-1]
        tokens[-1] = last._replace(text=(last.text or "") + detok.finish())
    tops = list(lp.output_top[start:end])
    if with_prompt:
        tokens = list(lp.prompt or []) + tokens
        tops = list(lp.prompt_top or []) + tops
    hidden = frozenset(hidden_ids) if req.skip_special_tokens is not False else frozenset()
    return legacy_logprobs(tokens, tops, offset, hidden)


def _token_detokenizer(state: ServerState, req: CompletionRequest, obj: PreparedRequest) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(state.tm.tokenizer, obj.prompt_ids,
                                  skip_special_tokens=req.skip_special_tokens is not False)


async def completion(state: ServerState, req: CompletionRequest) -> dict[str, Any] | SSEResponse:
    inputs, n = await build_completion_inputs(state, req)
    rid = f"cmpl-{inputs[0].req.rid}"
    if req.stream:
        return SSEResponse(_stream(state, req, inputs, n, rid))
    finals: dict[int, list[GenerateResult]] = {}
    async with aclosing(merge([state.tm.generate(i.req) for i in inputs])) as merged:
        async for p, results in merged:
            finals[p] = results
    flat = [r for p in range(len(inputs)) for r in finals[p]]
    special = state.tm.tokenizer.all_special_ids
    choices = []
    for k, r in enumerate(flat):
        echo = inputs[k // n].echo_text
        choices.append({
            "index": k, "text": echo + r.text,
            "logprobs": _logprobs(req, r.meta, bool(req.echo), special,
                                  _token_detokenizer(state, req, inputs[k // n].req)),
            "finish_reason": finish_reason(state, r.meta),
        })
    return {"id": rid, "object": "text_completion", "created": now(), "model": state.served_model_name,
            "choices": choices, "usage": usage_of(flat, n)}


async def _stream(
    state: ServerState, req: CompletionRequest, inputs: list[PromptInput], n: int, rid: str
) -> AsyncIterator[str]:
    created, model = now(), state.served_model_name
    include_usage = req.include_usage

    chunk = CompletionChunks(rid, created, model, include_usage).chunk

    cursors = [Cursor() for _ in range(len(inputs) * n)]
    special = state.tm.tokenizer.all_special_ids
    finals: dict[int, list[GenerateResult]] = {}
    try:
        async with aclosing(merge([state.tm.generate(i.req) for i in inputs])) as merged:
            async for p, results in merged:
                finals[p] = results
                for j, r in enumerate(results):
                    k = p * n + j
                    c, meta = cursors[k], r.meta
                    if c.finished:
                        continue
                    reason = finish_reason(state, meta)
                    first = not c.started
                    c.started = True
                    prefix = inputs[p].echo_text if first else ""
                    offset = c.extra.get("offset", 0)
                    delta = c.text_delta(r.text)
                    lp = None
                    if req.logprobs is not None and meta.logprobs is not None:
                        start, end = c.logprob_delta(meta.logprobs.output)
                        if end > start or (first and req.echo):
                            detok = c.extra.setdefault("detok", _token_detokenizer(state, req, inputs[p].req))
                            last = end if reason is None else None
                            lp = _logprobs(req, meta, first and bool(req.echo), special, detok, start, last, offset)
                    c.extra["offset"] = offset + len(prefix) + len(delta)
                    if prefix or delta or lp is not None:
                        yield chunk(k, prefix + delta, logprobs=lp)
                    if reason is not None:
                        c.finished = True
                        yield chunk(k, "", reason)
        if include_usage:
            flat = [r for p in range(len(inputs)) for r in finals[p]]
            yield sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                       "choices": [], "usage": usage_of(flat, n)})
    except ApiError as exc:
        yield sse(exc.body())
    except SchedulerUnavailable as exc:
        yield sse(ApiError(500, str(exc)).body())
    yield DONE
