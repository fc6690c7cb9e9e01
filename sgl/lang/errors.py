"""The one exception a program raises for a server's refusal, carrying the server's own message."""

from __future__ import annotations

from typing import Any


class BackendError(RuntimeError):
    """A server answered with an error (HTTP 4xx/5xx or an error event in a stream), or could not be reached.

    NOTE: `message` is the server's text verbatim, so callers can match on it (e.g. "grammar is unavailable").
    """

    def __init__(self, message: str, *, status: int | None = None, route: str | None = None) -> None:
        where = f"{route}: " if route else ""
        code = f"HTTP {status} " if status is not None else ""
        super().__init__(f"{code}{where}{message}".strip())
        self.message = message
        self.status = status
        self.route = route


def error_message(body: Any, fallback: str) -> str:
    """The message of an OpenAI-shaped error body ({"error": {"message": ...}}), else `fallback`."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
        if isinstance(body.get("message"), str):
            return body["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return fallback
