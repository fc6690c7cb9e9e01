"""Req.token_slice: any range of a request's tokens without building the whole sequence (the scheduler and the
speculative draft read a few tokens near the end every step)."""

from __future__ import annotations

from sgl.core.ipc import GenerateReq
from sgl.core.sampling.params import SamplingParams
from sgl.core.scheduler.req import Req


def test_token_slice_equals_slicing_the_whole_sequence_for_every_range() -> None:
    r = Req(GenerateReq("r", [10, 11, 12, 13], SamplingParams(max_new_tokens=8)), set(), 0)
    r.output_ids = [20, 21, 22]
    n = len(r.all_ids())
    for start in range(n + 2):
        for end in range(start, n + 3):
            assert r.token_slice(start, end) == r.all_ids()[start:end], (start, end)
