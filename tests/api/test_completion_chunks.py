"""Streaming /v1/completions chunks from the template are the bytes of ``sse()`` of the OpenAI chunk dict."""

from __future__ import annotations

from typing import Any

from sgl.api.completion_chunks import CompletionChunks
from sgl.api.streaming import sse


def _want(rid: str, created: int, model: str, usage: bool, index: int, text: str, reason: str | None,
          logprobs: dict[str, Any] | None) -> str:
    body: dict[str, Any] = {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}],
    }
    if usage:
        body["usage"] = None
    return sse(body)


def test_chunks_equal_sse_of_the_chunk_dict() -> None:
    lp = {"tokens": ["é", "\u2028"], "token_logprobs": [-0.5, None], "top_logprobs": [{"a": -1.0}, None],
          "text_offset": [0, 1]}
    for rid, model in (("cmpl-1", "demo"), ('cmpl-"é"', "m\\odel\u0085")):
        for usage in (False, True):
            chunks = CompletionChunks(rid, 1764979200, model, usage)
            for index, text, reason, logprobs in ((0, "hi \"there\"\n", None, None), (3, "", "stop", None),
                                                  (1, "é\u2028x", None, lp), (12, "", "length", lp)):
                want = _want(rid, 1764979200, model, usage, index, text, reason, logprobs)
                assert chunks.chunk(index, text, reason, logprobs) == want
