"""--stream-interval (SGLang's flag): a streamed request hears of its first token at once, then of every N new
tokens, then of its end; what it finally holds is what it holds streamed every step."""

from __future__ import annotations

from pathlib import Path

import pytest

import sgl
from sgl.core.ipc import FinishReason
from tests.core.engine_utils import make_engine
from tests.core.test_host_step_paths import make_req
from tests.core.test_host_step_paths import told as news_of

PARAMS = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}


@pytest.mark.parametrize("interval", [1, 4])
def test_a_streamed_request_is_told_first_then_every_interval_then_at_its_end(interval: int) -> None:
    r = make_req(stream=True, max_new=10)
    told = []
    for step in range(10):
        r.output_ids.append(step)
        if step == 9:
            r.finished_reason = FinishReason("length")
        out = r.take_output(interval)
        if out is not None:
            told.append(len(r.output_ids))
            new, _ = news_of(out)
            assert new == r.output_ids[len(r.output_ids) - len(new):]
    assert told == ([1, 5, 9, 10] if interval == 4 else list(range(1, 11)))


def test_a_request_that_is_not_streamed_ignores_the_interval() -> None:
    r = make_req(stream=False, max_new=10)
    told = []
    for step in range(10):
        r.output_ids.append(step)
        if step == 9:
            r.finished_reason = FinishReason("length")
        if r.take_output(4) is not None:
            told.append(len(r.output_ids))
    assert told == [1, 10]


def _stream(engine: sgl.Engine, prompt: str) -> list[dict]:
    return list(engine.generate(prompt, PARAMS, stream=True, return_logprob=True))


def test_the_engine_streams_every_interval_and_ends_equal(demo_model_dir: Path) -> None:
    with make_engine(demo_model_dir) as every_step:
        plain = _stream(every_step, "Stream me slowly")
    with make_engine(demo_model_dir, stream_interval=4) as batched:
        chunks = _stream(batched, "Stream me slowly")
    # NOTE: a slow reader may see two events merged, so only lengths the scheduler sends can appear
    assert {len(c["output_ids"]) for c in chunks} <= {1, 5, 9, 10}
    assert chunks[-1]["output_ids"] == plain[-1]["output_ids"]
    assert chunks[-1]["text"] == plain[-1]["text"]
    lps = chunks[-1]["meta_info"]["output_token_logprobs"]
    assert [t for _, t, *_ in lps] == chunks[-1]["output_ids"]  # no logprob lost in the held-back steps


def test_stream_interval_below_one_is_refused_naming_the_field(demo_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="stream_interval"):
        make_engine(demo_model_dir, stream_interval=0)
