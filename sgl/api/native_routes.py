"""SGLang's native routes: /generate, health, model and server info, load, cache flush, abort, (de)tokenize,
/metrics; in the shapes SGLang's own clients (bench_serving, the frontend's RuntimeEndpoint, sglang-router) read."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import JSONResponse, PlainTextResponse, Response

from sgl import __version__
from sgl.api.disconnect import abort_on_disconnect
from sgl.api.errors import ApiError
from sgl.api.generate_events import GenerateEvents
from sgl.api.metrics import CONTENT_TYPE
from sgl.api.openai_common import abort_error
from sgl.api.openapi_doc import TokenId
from sgl.api.request_extras import COMMON, drop_neutral
from sgl.api.state import ServerState
from sgl.api.streaming import DONE, SSEResponse, merge, sse
from sgl.core.replies import SchedulerUnavailable
from sgl.core.request_manager import GenerateInput, PreparedRequest
from sgl.core.request_result import GenerateResult

router = APIRouter()

HEALTH_GENERATE_TIMEOUT_S = 20.0
WEIGHT_VERSION = "default"  # SGLang's name for weights that were never updated in place


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


_NON_EMPTY = {"minLength": 1, "minItems": 1}


class GenerateRequest(_Body):
    """SGLang's GenerateReqInput (the text-model subset); null means "not given" for every field.

    SGLang's other fields are accepted at their neutral value and refused otherwise (request_extras.py).
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [  # exactly one of text and input_ids
        {"required": ["text"], "properties": {"text": {"not": {"type": "null"}}, "input_ids": {"type": "null"}}},
        {"required": ["input_ids"], "properties": {"input_ids": {"not": {"type": "null"}}, "text": {"type": "null"}}},
    ]})

    text: str | list[str] | None = Field(default=None, json_schema_extra=_NON_EMPTY)
    input_ids: list[TokenId] | list[list[TokenId]] | None = Field(default=None, json_schema_extra=_NON_EMPTY)
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    rid: str | list[str] | None = None
    return_logprob: bool | list[bool] | None = None
    logprob_start_len: int | list[int] | None = None
    top_logprobs_num: int | list[int] | None = None
    return_text_in_logprobs: bool | None = None
    stream: bool | None = None
    lora_path: str | list[str | None] | None = None  # a loaded adapter's name, or one (or null) per prompt

    @model_validator(mode="before")
    @classmethod
    def _known_extras(cls, data: Any) -> Any:
        return drop_neutral(data, COMMON)


class AbortRequest(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [  # a rid, or abort_all: true
        {"required": ["rid"], "properties": {"rid": {"type": "string", "minLength": 1}}},
        {"required": ["abort_all"], "properties": {"abort_all": {"const": True}}},
    ]})

    rid: str | None = None
    abort_all: bool | None = False


class TokenizeRequest(_Body):
    prompt: str | list[str]
    add_special_tokens: bool | None = True


class DetokenizeRequest(_Body):
    tokens: list[TokenId]
    skip_special_tokens: bool | None = True


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.sgl
    return state


def _per_prompt(value: Any, count: int, name: str) -> list[Any]:
    if isinstance(value, list):
        if len(value) != count:
            raise ApiError(400, f"{name} has {len(value)} entries for {count} prompts", param=name)
        return value
    return [value] * count


async def _inputs(state: ServerState, body: GenerateRequest) -> tuple[list[PreparedRequest], bool]:
    tm = state.tm
    tm.check_alive()
    if (body.text is None) == (body.input_ids is None):
        raise ApiError(400, "give exactly one of text and input_ids", param="text")
    batched = isinstance(body.text, list) or bool(body.input_ids and isinstance(body.input_ids[0], list))
    prompts: list[Any] = (body.text if batched else [body.text]) if body.text is not None else \
        (body.input_ids if batched else [body.input_ids])  # type: ignore[assignment]
    if not prompts:
        raise ApiError(400, "the batch is empty", param="text" if body.text is not None else "input_ids")
    count = len(prompts)
    if isinstance(body.rid, str) and batched:
        raise ApiError(400, "a batch needs a list of rids", param="rid")
    base = uuid.uuid4().hex
    rids = _per_prompt(body.rid, count, "rid")
    params = _per_prompt(body.sampling_params, count, "sampling_params")
    lps = _per_prompt(body.return_logprob, count, "return_logprob")
    starts = _per_prompt(body.logprob_start_len, count, "logprob_start_len")
    tops = _per_prompt(body.top_logprobs_num, count, "top_logprobs_num")
    loras = _per_prompt(body.lora_path, count, "lora_path")
    prepared = []
    for i, prompt in enumerate(prompts):
        obj = GenerateInput(
            text=prompt if isinstance(prompt, str) else None, input_ids=None if isinstance(prompt, str) else prompt,
            sampling_params=params[i], rid=rids[i] or (base if count == 1 else f"{base}_{i}"),
            return_logprob=bool(lps[i]), logprob_start_len=starts[i], top_logprobs_num=tops[i],
            return_text_in_logprobs=bool(body.return_text_in_logprobs), stream=bool(body.stream),
            max_tokens_name="sampling_params.max_new_tokens", lora_path=loras[i],
        )
        prepared.append(await tm.prepare(obj))  # NOTE: all or nothing: a bad prompt in a batch sends none of it
    return prepared, batched


def _error_of(state: ServerState, result: GenerateResult) -> ApiError | None:
    meta = result.meta
    if meta.aborted and (meta.error_status is not None or state.phase == "draining"):
        return abort_error(state, meta)
    return None


@router.post("/generate", response_model=None)
async def generate(body: GenerateRequest, request: Request) -> Any:
    state = _state(request)
    objs, batched = await _inputs(state, body)
    if body.stream:
        return SSEResponse(_stream(state, objs, indexed=batched or any(o.n > 1 for o in objs)))
    return await abort_on_disconnect(request, _generate_all(state, objs, batched))


async def _generate_all(state: ServerState, objs: list[PreparedRequest], batched: bool) -> Any:
    finals: dict[int, list[GenerateResult]] = {}
    async with aclosing(merge([state.tm.generate(o) for o in objs])) as merged:
        async for p, results in merged:
            finals[p] = results
    flat = [r for p in range(len(objs)) for r in finals[p]]
    for r in flat:
        err = _error_of(state, r)
        if err is not None:
            raise err
    dicts = [r.to_dict() for r in flat]
    if batched:
        return dicts
    return dicts if len(dicts) > 1 else dicts[0]


async def _stream(state: ServerState, objs: list[PreparedRequest], indexed: bool) -> AsyncIterator[str]:
    offsets = [0]
    for o in objs[:-1]:
        offsets.append(offsets[-1] + o.n)
    seen: dict[int, tuple[int, int, bool]] = {}
    events = GenerateEvents(indexed)
    try:
        async with aclosing(merge([state.tm.generate(o) for o in objs])) as merged:
            async for p, results in merged:
                for j, r in enumerate(results):
                    k = offsets[p] + j
                    err = _error_of(state, r)
                    if err is not None:
                        yield sse(err.body())
                        yield DONE
                        return
                    mark = (len(r.text), len(r.output_ids), r.finished)
                    if seen.get(k) == mark:
                        continue
                    seen[k] = mark
                    yield events.event(k, r)
    except ApiError as exc:
        yield sse(exc.body())
    except SchedulerUnavailable as exc:
        yield sse(ApiError(500, str(exc)).body())
    yield DONE


@router.get("/health", response_class=Response)
async def health() -> Response:
    return Response(status_code=200)


@router.get("/health_generate", response_class=Response)
async def health_generate(request: Request) -> Response:
    """Ready only if the scheduler produces a token now (a health probe that sees a hung scheduler)."""
    tm = _state(request).tm
    tm.check_alive()
    obj = await tm.prepare(GenerateInput(input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0.0},
                                         rid=f"health-{uuid.uuid4().hex}"))

    async def run() -> None:
        async with aclosing(tm.generate(obj)) as results:
            async for _ in results:
                pass

    try:
        await asyncio.wait_for(run(), HEALTH_GENERATE_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise ApiError(503, f"the scheduler produced no token within {HEALTH_GENERATE_TIMEOUT_S} s") from None
    return Response(status_code=200)


@router.get("/get_model_info")
@router.get("/model_info")  # SGLang's newer name
async def get_model_info(request: Request) -> dict[str, Any]:
    state = _state(request)
    info = state.tm.model_info
    keys = ("model_path", "tokenizer_path", "architecture", "context_length", "vocab_size", "dtype", "chat_template")
    return {"served_model_name": state.served_model_name, "is_generation": True, **{k: info.get(k) for k in keys},
            "architectures": [info.get("architecture")], "special_tokens": state.tm.tokenizer.special_tokens_map,
            # SGLang's: no preferred sampling params, weights never updated in place, text only
            "preferred_sampling_params": None, "weight_version": WEIGHT_VERSION, "has_image_understanding": False,
            "has_audio_understanding": False}


@router.get("/get_server_info")
@router.get("/server_info")  # SGLang's newer name
async def get_server_info(request: Request) -> dict[str, Any]:
    """SGLang's shape: the server arguments at the top level, the model's and the scheduler's figures over them, and
    ``internal_states`` (one entry per data-parallel replica) for the clients that read it."""
    state = _state(request)
    tm = state.tm
    scheduler = await tm.scheduler_info()
    args = dataclasses.asdict(state.args)
    if args.get("api_key"):
        args["api_key"] = "<redacted>"
    internal = [{**replica, "last_gen_throughput": tm.metrics.gen_throughput(), "world_size": state.args.tp_size}
                for replica in scheduler.get("replicas", [scheduler])]
    return {**args, **tm.model_info, **scheduler, "served_model_name": state.served_model_name,
            "max_req_input_len": tm.limits.prompt_limit - 1, "num_pending_requests": tm.num_pending,
            "internal_states": internal, "version": __version__, "server_args": args}


@router.get("/get_load")
async def get_load(request: Request) -> list[dict[str, Any]]:
    """SGLang's load report, one entry per data-parallel replica, as load-aware routers poll it."""
    scheduler = await _state(request).tm.scheduler_info()
    loads = []
    for rank, replica in enumerate(scheduler.get("replicas", [scheduler])):
        running, waiting = int(replica.get("num_running_reqs", 0)), int(replica.get("num_waiting_reqs", 0))
        loads.append({"dp_rank": rank, "num_reqs": running + waiting, "num_waiting_reqs": waiting,
                      "num_tokens": int(replica.get("request_owned_tokens", 0)), "ts_tic": time.perf_counter()})
    return loads


@router.api_route("/flush_cache", methods=["GET", "POST"], responses={
    400: {"description": "requests are running or waiting: the cache was not flushed (SGLang's answer); retry later"}})
async def flush_cache(request: Request) -> JSONResponse:
    resp = await _state(request).tm.flush_cache()
    message = "cache flushed" if resp.ok else resp.message
    return JSONResponse({"success": resp.ok, "message": message}, status_code=200 if resp.ok else 400)


@router.post("/abort_request")
async def abort_request(body: AbortRequest, request: Request) -> dict[str, Any]:
    tm = _state(request).tm
    if body.abort_all:
        return {"success": True, "aborted": tm.abort_all()}
    if not body.rid:
        raise ApiError(400, "give rid or abort_all: true", param="rid")
    tm.abort(body.rid)
    return {"success": True}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """Off the event loop for a long prompt: tokenizing and serializing megabytes takes seconds."""
    tm = _state(request).tm
    special = body.add_special_tokens is not False
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt

    def run() -> bytes:
        ids = [tm.tokenizer.encode(p, add_special_tokens=special) for p in prompts]
        single = isinstance(body.prompt, str)
        out = {"tokens": ids[0] if single else ids, "count": len(ids[0]) if single else [len(x) for x in ids],
               "max_model_len": tm.limits.context_len}
        return json.dumps(out, separators=(",", ":")).encode()

    return Response(await tm.run(run, sum(len(p) for p in prompts)), media_type="application/json")


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    tm = _state(request).tm
    bad = [t for t in body.tokens if not 0 <= t < tm.limits.vocab_size]
    if bad:
        raise ApiError(400, f"token id {bad[0]} is outside the vocabulary [0, {tm.limits.vocab_size})",
                       param="tokens")
    skip = body.skip_special_tokens is not False
    return {"text": await tm.run(lambda: tm.tokenizer.decode(body.tokens, skip_special_tokens=skip), len(body.tokens))}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    tm = _state(request).tm
    scheduler = await tm.scheduler_info()
    return PlainTextResponse(tm.metrics.render(scheduler, tm.num_pending), media_type=CONTENT_TYPE)
