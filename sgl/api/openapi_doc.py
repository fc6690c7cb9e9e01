"""/openapi.json describes what this server accepts, so clients and generators (schemathesis) can trust it.

FastAPI derives the document from the request models; what the models cannot say is added here, once the scheduler
is ready (the gate answers 503 before that): the bounds that depend on the model and the flags (token ids below the
vocabulary size, n up to --max-n), the routes that only answer an error on this server (LoRA without --enable-lora),
and the cross-field rules the routes check (exactly one of text and input_ids, ...).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import WithJsonSchema

from sgl.api.state import ServerState

TOKEN_ID = "x-sgl-token-id"  # marks an integer field that holds a token id (bounded by the vocabulary here)
MAX_N = "x-sgl-max-n"  # marks the n field (bounded by --max-n here)
MAX_TOKENS = "x-sgl-max-tokens"  # marks max_tokens fields (bounded by --max-new-tokens-limit here, where set)
LORA_PATHS = ("/load_lora_adapter", "/unload_lora_adapter")


def install_openapi(app: FastAPI, state: ServerState) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None or state.manager is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            if state.manager is not None:  # NOTE: cached only once the model's limits are known
                refine(doc, state)
                app.openapi_schema = doc
            return doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
# NOTE: what any route may answer besides its success (FastAPI's 422 never leaves this server: errors.py)
COMMON_ERRORS = {
    "400": "invalid request: the message names the field and the limit",
    "413": "the body is larger than --max-request-bytes",
    "500": "the request failed inside the engine (the message names the error), or the scheduler died",
    "503": "starting, draining, or the waiting queue is full (--max-queued-requests); see Retry-After",
}
ROUTE_ERRORS = {"/v1/models/{model_id}": {"404": "no such model or adapter"}}


def refine(doc: dict[str, Any], state: ServerState) -> None:
    limits = state.tm.limits
    paths: dict[str, Any] = doc.get("paths", {})
    if not state.args.lora_enabled:
        for path in LORA_PATHS:
            paths.pop(path, None)
    errors = dict(COMMON_ERRORS)
    if state.args.api_key:
        errors["401"] = "a missing or wrong API key"
    for path, ops in paths.items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for code, why in {**errors, **ROUTE_ERRORS.get(path, {})}.items():
                responses.setdefault(code, {"description": why,
                                            "content": {"application/json": {"schema": ERROR_SCHEMA}}})
    bounds = {TOKEN_ID: limits.vocab_size - 1, MAX_N: limits.max_n, MAX_TOKENS: limits.max_new_tokens_limit}
    _walk(doc, bounds)


def _walk(node: Any, bounds: dict[str, int | None]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, bounds)
        return
    if not isinstance(node, dict):
        return
    for marker, bound in bounds.items():
        if node.pop(marker, False) and bound is not None:
            node["maximum"] = bound
    for value in node.values():
        _walk(value, bounds)


# NOTE: document-only schema: validation stays the route's, with its own messages naming the field and the limit
TokenId = Annotated[int, WithJsonSchema({"type": "integer", "minimum": 0, TOKEN_ID: True})]
