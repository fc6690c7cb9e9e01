"""The SSE chunks of a streaming /v1/completions, built from a template of the fields that vary per chunk.

Why: a dict per token handed to the JSON encoder walked the same id, object, created and model on every chunk; the
template encodes those once per stream and only the text (and logprobs, when asked for) per chunk. The bytes are
exactly those of ``sse(body)`` for the dict the OpenAI format specifies (tests/api/test_completion_chunks.py).
"""

from __future__ import annotations

from typing import Any

from sgl.api.streaming import ENCODER


class CompletionChunks:
    """Encodes one stream's ``text_completion`` chunks; ``include_usage`` adds ``"usage": null`` to each."""

    def __init__(self, rid: str, created: int, model: str, include_usage: bool) -> None:
        self._head = (f'data: {{"id": {ENCODER.encode(rid)}, "object": "text_completion", "created": {created!r}, '
                      f'"model": {ENCODER.encode(model)}, "choices": [{{"index": ')
        self._tail = ', "usage": null}\n\n' if include_usage else "}\n\n"

    def chunk(self, index: int, text: str, reason: str | None = None, logprobs: dict[str, Any] | None = None) -> str:
        lp = "null" if logprobs is None else ENCODER.encode(logprobs)
        fr = "null" if reason is None else ENCODER.encode(reason)
        return (f'{self._head}{index!r}, "text": {ENCODER.encode(text)}, "logprobs": {lp}, '
                f'"finish_reason": {fr}}}]{self._tail}')
