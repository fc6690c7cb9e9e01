"""/generate's incremental SSE encoder sends exactly the bytes of ``sse(result.to_dict())``, event after event."""

from __future__ import annotations

import json

from sgl.api.generate_events import GenerateEvents, meta_json
from sgl.api.streaming import ENCODER, sse
from sgl.core.ipc import FinishReason
from sgl.core.request_result import GenerateResult, Logprobs, MetaInfo, TokenLogprob


def _result(ids: list[int], text: str, done: bool, logprobs: bool = False) -> GenerateResult:
    lps = Logprobs([TokenLogprob(-0.5, t, None) for t in ids], [[] for _ in ids]) if logprobs else None
    meta = MetaInfo("rid-1", FinishReason("length") if done else None, 7, len(ids), 2, 0.25, lps)
    return GenerateResult(text, list(ids), meta)


def test_events_equal_json_dumps_of_the_cumulative_results() -> None:
    for indexed in (False, True):
        enc = GenerateEvents(indexed)
        ids: list[int] = []
        for step, new in enumerate([[5], [17, 3], [], [2047], [0, 1, 2]]):
            ids = ids + new
            text = "é\u2028\"x\\" * step
            for k in (0, 3):  # two choices interleaved keep their own ids
                r = _result(ids[k:], text, step == 4, logprobs=k == 3)
                want = sse({**r.to_dict(), "index": k} if indexed else r.to_dict())
                got = enc.event(k, r)
                assert got == want
                assert json.loads(got[len("data: "):])["output_ids"] == ids[k:]


def test_a_shorter_result_is_encoded_afresh_not_from_the_stale_prefix() -> None:
    enc = GenerateEvents(False)
    enc.event(0, _result([1, 2, 3], "", False))
    r = _result([9], "", True)
    assert enc.event(0, r) == sse(r.to_dict())


def test_meta_template_equals_the_encoder_for_every_optional_field() -> None:
    metas = [
        MetaInfo("r-é\"", None, 7, 0, 0, 1e-05),
        MetaInfo("r", FinishReason("stop", "</s>\u2028"), 7, 3, 2, 12.5, spec_verify_ct=2),
        MetaInfo("r", FinishReason("stop", 2), 1, 1, 0, 0.0),
        MetaInfo("r", FinishReason("abort", message="too long", status_code=400), 9, 0, 0, 3.25),
        MetaInfo("r", FinishReason("abort", message="gone"), 9, 0, 0, 3.0, spec_verify_ct=0),
    ]
    for meta in metas:
        assert meta_json(meta) == ENCODER.encode(meta.to_dict())
