"""Every error leaves the server as OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}.

NOTE: FastAPI's 422 never appears: request validation errors are 400, like every other client error.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sgl.api.request_extras import UNSUPPORTED_FIELD
from sgl.core.replies import SchedulerUnavailable

logger = logging.getLogger(__name__)

# pydantic names the union member that failed inside the location ("prompt.list[int]"): not a field name
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|.*\[.*\]|function-.*)$")

RETRY_AFTER_S = 1  # seconds a client is asked to wait after a 503

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "invalid_request_error", 500: "internal_server_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """Raised by routes for a client-visible error with a status code."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "internal_server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        # NOTE: every 503 is temporary (busy, starting, draining): say when to come back
        headers = {"Retry-After": str(RETRY_AFTER_S)} if self.status == 503 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_response(status: int, message: str, **kwargs: Any) -> JSONResponse:
    return ApiError(status, message, **kwargs).response()


def error_bytes(status: int, message: str, **kwargs: Any) -> bytes:
    """The same JSON for the raw ASGI middlewares that answer before FastAPI runs."""
    return json.dumps(ApiError(status, message, **kwargs).body()).encode()


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _TYPE_TAG.match(str(p))]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == UNSUPPORTED_FIELD:  # a known field sgl refuses: its own message names it
        field = (first.get("ctx") or {}).get("field")
        return msg, str(field) if field else None
    if first.get("type") == "extra_forbidden":
        msg = f"unrecognized request argument: {param}"
    elif first.get("type") == "json_invalid":
        msg = "the request body is not valid JSON"
        param = None
    return (f"{param}: {msg}" if param and "unrecognized" not in msg else msg), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(ValueError)
    async def _value(_: Request, exc: ValueError) -> JSONResponse:
        return error_response(400, str(exc), param=getattr(exc, "param", None))  # RequestError names its field

    @app.exception_handler(SchedulerUnavailable)
    async def _dead(_: Request, exc: SchedulerUnavailable) -> JSONResponse:
        return error_response(500, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = error_response(exc.status_code, str(exc.detail))
        resp.headers.update(exc.headers or {})  # NOTE: a 405 keeps its Allow header
        return resp

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}")
