"""POST /v1/embeddings: the prompt's pooled, normalized hidden state, for a server started with --is-embedding."""

from __future__ import annotations

import asyncio
import base64
import struct
from contextlib import aclosing
from typing import Any, Literal

from pydantic import Field

from sgl.api.errors import ApiError
from sgl.api.openai_common import usage
from sgl.api.openai_protocol import _Strict
from sgl.api.state import ServerState
from sgl.core.request_manager import GenerateInput, PreparedRequest
from sgl.core.request_result import GenerateResult

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(_Strict):
    input: EmbeddingInput
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    rid: str | None = None


def _inputs(given: EmbeddingInput) -> list[dict[str, Any]]:
    """One {"text"} or {"input_ids"} per input: a string, a list of strings, a token list, or a list of token lists."""
    if isinstance(given, str):
        return [{"text": given}]
    if not given:
        raise ApiError(400, "input must not be empty", param="input")
    if all(isinstance(x, str) for x in given):
        return [{"text": x} for x in given]
    if all(isinstance(x, int) for x in given):
        return [{"input_ids": list(given)}]
    return [{"input_ids": list(x)} for x in given]  # type: ignore[arg-type]


def _encode(vector: list[float], fmt: str) -> list[float] | str:
    """OpenAI's base64 format: the float32 little-endian bytes."""
    if fmt == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def _embed(state: ServerState, obj: PreparedRequest) -> GenerateResult:
    final: list[GenerateResult] = []
    async with aclosing(state.tm.generate(obj)) as results:
        async for final in results:
            pass
    return final[0]


async def embeddings(state: ServerState, req: EmbeddingRequest) -> dict[str, Any]:
    if not state.args.is_embedding:
        raise ApiError(400, "this server does not serve embeddings: start it with --is-embedding", param="model")
    if req.dimensions is not None:
        raise ApiError(400, "dimensions is not supported: the model's hidden size is the embedding size",
                       param="dimensions")
    state.tm.check_alive()
    pooling = state.embedding_pooling
    prepared = []
    for i, given in enumerate(_inputs(req.input)):
        rid = f"{req.rid}-{i}" if req.rid else None
        obj = GenerateInput(**given, sampling_params={"max_new_tokens": 0}, rid=rid, pooling=pooling)
        prepared.append(await state.tm.prepare(obj))
    results = await asyncio.gather(*(_embed(state, p) for p in prepared))
    data = []
    for i, r in enumerate(results):
        if r.meta.aborted or r.embedding is None:
            message = r.meta.finish_reason.message if r.meta.finish_reason is not None else None
            raise ApiError(int(r.meta.error_status or 500), message or "the embedding request was aborted")
        data.append({"object": "embedding", "index": i, "embedding": _encode(r.embedding, req.encoding_format)})
    prompt_tokens = sum(r.meta.prompt_tokens for r in results)
    return {"object": "list", "data": data, "model": state.served_model_name,
            "usage": {k: v for k, v in usage(prompt_tokens, 0).items() if k != "completion_tokens"}}
