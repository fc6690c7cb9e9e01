"""The SSE events of a streaming /generate: SGLang's cumulative shape, with output_ids encoded incrementally.

Why: each event carries every output id so far, and ``json.dumps`` of that list on every step made the API
process's cost per token grow with the output length (encoding events was a quarter of its event-loop time at 256
output tokens on the demo model, most of it the ids). The ids' JSON text is kept per choice and extended by the new ids only; the bytes sent are exactly
those of ``sse(result.to_dict())``.
"""

from __future__ import annotations

from sgl.api.streaming import ENCODER
from sgl.core.request_result import GenerateResult, MetaInfo


def meta_json(meta: MetaInfo) -> str:
    """``ENCODER.encode(meta.to_dict())``, built from a template: the dict and the encoder's walk of it were a tenth
    of the API process's event loop per streamed token. Logprobs (nested lists) still go through the encoder."""
    if meta.logprobs is not None:
        return ENCODER.encode(meta.to_dict())
    fr = meta.finish_reason
    reason = "null" if fr is None else ENCODER.encode(fr.to_dict())
    tail = ""
    if meta.error_status is not None:
        tail = f', "error_status": {meta.error_status!r}'
    if meta.spec_verify_ct is not None:
        tail += f', "spec_verify_ct": {meta.spec_verify_ct!r}'
    # NOTE: json writes ints and finite floats as their repr; the key order is MetaInfo.to_dict()'s
    return (f'{{"id": {ENCODER.encode(meta.id)}, "finish_reason": {reason}, "prompt_tokens": {meta.prompt_tokens!r}, '
            f'"completion_tokens": {meta.completion_tokens!r}, "cached_tokens": {meta.cached_tokens!r}, '
            f'"e2e_latency": {meta.e2e_latency!r}{tail}}}')


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
        meta = meta_json(result.meta)
        index = f', "index": {k}' if self.indexed else ""
        return f'data: {{"text": {text}, "output_ids": [{self._ids_json(k, result.output_ids)}], ' \
               f'"meta_info": {meta}{index}}}\n\n'
