"""LoRA over HTTP, as SGLang serves it: POST /load_lora_adapter and /unload_lora_adapter, the adapter a request
names (native ``lora_path``; OpenAI ``model`` as ``"adapter"`` or ``"base:adapter"``), and the adapters /v1/models
lists with the base model as their parent."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from sgl.api.errors import ApiError
from sgl.api.state import ServerState
from sgl.core.lora.base import FEATURE

router = APIRouter()
LORA_CALL_TIMEOUT_S = 300.0


class LoadLoRARequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str
    lora_path: str
    pinned: bool | None = False  # SGLang's: keep resident; sgl's pool is LRU over batches, so nothing to pin


class UnloadLoRARequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.sgl
    return state


async def lora_call(state: ServerState, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The LoRA feature's answer; ``{"error": ...}`` when it refused (or LoRA is off)."""
    if not state.args.lora_enabled:
        return {"error": "LoRA is not enabled on this server (start it with --enable-lora or --lora-paths)"}
    state.tm.check_alive()
    fut = state.tm.replies.feature_call(FEATURE, method, kwargs)
    result: dict[str, Any] = (await asyncio.wait_for(asyncio.wrap_future(fut), LORA_CALL_TIMEOUT_S)).info
    return result


async def loaded_adapters(state: ServerState) -> list[dict[str, Any]]:
    if not state.args.lora_enabled:
        return []
    result = await lora_call(state, "list", {})
    adapters: list[dict[str, Any]] = result.get("adapters", [])
    return adapters


def adapter_of(state: ServerState, model: str | None, lora_path: str | None = None) -> str | None:
    """The adapter an OpenAI request names: ``lora_path`` if given, else ``model`` when it is not the base model
    (``"adapter"`` or ``"base:adapter"``). Without LoRA the model field is not checked, as before."""
    if lora_path is not None:
        return lora_path
    if model is None or not state.args.lora_enabled or model == state.served_model_name:
        return None
    base, sep, adapter = model.rpartition(":")
    if sep and base == state.served_model_name:
        return adapter or None
    return model


def _update_response(result: dict[str, Any]) -> JSONResponse:
    if "error" in result:
        return JSONResponse({"success": False, "error_message": result["error"], "loaded_adapters": None},
                            status_code=400)
    loaded = {a["name"]: a["path"] for a in result.get("adapters", [])}
    return JSONResponse({"success": True, "error_message": None, "loaded_adapters": loaded})


@router.post("/load_lora_adapter")
async def load_lora_adapter(body: LoadLoRARequest, request: Request) -> JSONResponse:
    return _update_response(await lora_call(_state(request), "load",
                                            {"lora_name": body.lora_name, "lora_path": body.lora_path}))


@router.post("/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoRARequest, request: Request) -> JSONResponse:
    """Requests already running on the adapter finish on it; new ones naming it are refused at once."""
    return _update_response(await lora_call(_state(request), "unload", {"lora_name": body.lora_name}))


def unknown_model(state: ServerState, model_id: str, adapters: list[dict[str, Any]]) -> ApiError:
    names = ", ".join([state.served_model_name, *(a["name"] for a in adapters)])
    return ApiError(404, f"the model {model_id!r} does not exist; this server serves {names}", param="model",
                    code="model_not_found")
