"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /v1/models/{id}.

NOTE: any "model" value is accepted in a request (as SGLang does; one model is served), but /v1/models lists only the
served name and /v1/models/{id} answers 404 for any other.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from sgl.api.disconnect import abort_on_disconnect
from sgl.api.errors import ApiError
from sgl.api.lora_routes import loaded_adapters, unknown_model
from sgl.api.openai_chat import chat_completion
from sgl.api.openai_completions import completion
from sgl.api.openai_embeddings import EmbeddingRequest, embeddings
from sgl.api.openai_protocol import ChatCompletionRequest, CompletionRequest, ModelCard
from sgl.api.state import ServerState

router = APIRouter()


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.sgl
    return state


def _card(state: ServerState) -> dict[str, Any]:
    return ModelCard(id=state.served_model_name, created=state.started_at, root=state.model_path,
                     max_model_len=state.tm.limits.context_len).model_dump()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> dict[str, Any] | Response:
    return await abort_on_disconnect(request, chat_completion(_state(request), body))


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> dict[str, Any] | Response:
    return await abort_on_disconnect(request, completion(_state(request), body))


@router.post("/v1/embeddings", response_model=None)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any] | Response:
    return await abort_on_disconnect(request, embeddings(_state(request), body))


def _adapter_card(state: ServerState, adapter: dict[str, Any]) -> dict[str, Any]:
    return ModelCard(id=adapter["name"], created=state.started_at, root=adapter["path"],
                     parent=state.served_model_name, max_model_len=state.tm.limits.context_len).model_dump()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = _state(request)
    adapters = [_adapter_card(state, a) for a in await loaded_adapters(state)]
    return {"object": "list", "data": [_card(state), *adapters]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    if model_id == state.served_model_name:
        return _card(state)
    adapters = await loaded_adapters(state)
    for a in adapters:
        if a["name"] == model_id:
            return _adapter_card(state, a)
    if not state.args.lora_enabled:
        raise ApiError(404, f"the model {model_id!r} does not exist; this server serves {state.served_model_name!r}",
                       param="model", code="model_not_found")
    raise unknown_model(state, model_id, adapters)
