"""The SSE events of a streaming /generate: SGLang's cumulative shape, with output_ids encoded incrementally.

Why: each event carries every output id so far, and ``json.dumps`` of that list on every step made the API
process's cost per token grow with the output length (encoding events was a quarter of its event-loop time at 256
output tokens on the demo model, most of it the ids). The ids' JSON text is kept per choice and extended by the new ids only; the bytes sent are exactly
those of ``sse(result.to_dict())``.
"""

from __future__ import annotations

from sgl.api.streaming import ENCODER
from sgl.core.request_result import GenerateResult


class GenerateEvents:
    """Encodes one stream's results; ``k`` is the choice's index over the whole request (batch and n)."""

    def __init__(self, indexed: bool) -> None:
        self.indexed = indexed
        self._ids: dict[int, tuple[int, str]] = {}  # choice -> (ids encoded, their JSON without the brackets)

    def _ids_json(self, k: int, ids: list[int]) -> str:
        # NOTE: a choice's output_ids only ever grow (RequestManager extends them), so the encoded ones are a prefix
        n, text = self._ids.get(k, (0, ""))
        if len(ids) < n:
            n, text = 0, ""
        if len(ids) > n:
            new = ", ".join(map(str, ids[n:]))
            text = f"{text}, {new}" if text else new
            self._ids[k] = (len(ids), text)
        return text

    def event(self, k: int, result: GenerateResult) -> str:
        """``data: {json}\\n\\n`` for ``result`` (plus ``"index": k`` when the stream is indexed)."""
        # NOTE: the keys and their order are GenerateResult.to_dict()'s; a test holds the bytes equal to sse() of it
        text = ENCODER.encode(result.text)
        meta = ENCODER.encode(result.meta.to_dict())
        index = f', "index": {k}' if self.indexed else ""
        return f'data: {{"text": {text}, "output_ids": [{self._ids_json(k, result.output_ids)}], ' \
               f'"meta_info": {meta}{index}}}\n\n'
