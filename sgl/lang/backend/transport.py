"""The HTTP plumbing both backends share: one pooled client, errors turned into BackendError, SSE parsing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from sgl.lang.errors import BackendError, error_message

DEFAULT_TIMEOUT_S = 600.0


class HttpClient:
    """A thread-safe JSON client for one server; every failure becomes a BackendError with the server's message."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # NOTE: forks and run_batch threads share this client; the pool must fit them all at once.
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def get(self, route: str) -> Any:
        return self._call("GET", route, None)

    def post(self, route: str, body: dict[str, Any]) -> Any:
        return self._call("POST", route, body)

    def _call(self, method: str, route: str, body: dict[str, Any] | None) -> Any:
        try:
            resp = self._client.request(method, route, json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach {self.base_url}: {exc}", route=route) from exc
        if resp.status_code >= 400:
            raise _http_error(resp, route)
        try:
            return resp.json()
        except ValueError as exc:
            raise BackendError(f"the server answered with invalid JSON: {resp.text[:200]!r}", route=route) from exc

    def stream(self, route: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Yields each `data: {json}` event until `data: [DONE]`; an error event raises BackendError."""
        try:
            with self._client.stream("POST", route, json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _http_error(resp, route)
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if isinstance(event, dict) and "error" in event:
                        raise BackendError(error_message(event, data), route=route)
                    yield event
        except httpx.HTTPError as exc:
            raise BackendError(f"the stream from {self.base_url} broke: {exc}", route=route) from exc

    def close(self) -> None:
        self._client.close()


def _http_error(resp: httpx.Response, route: str) -> BackendError:
    try:
        body: Any = resp.json()
    except ValueError:
        body = None
    return BackendError(error_message(body, resp.text.strip() or resp.reason_phrase), status=resp.status_code,
                        route=route)
