"""Requests of known length (ignore_eos, nothing else that can stop them) reserve their whole future and teach the
learned floor nothing (sgl/core/scheduler/new_token_ratio.py, Req.output_len_known)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import sgl
from sgl.core.ipc import GenerateReq
from sgl.core.sampling.params import SamplingParams
from sgl.core.scheduler.new_token_ratio import (
    INIT_NEW_TOKEN_RATIO,
    MIN_NEW_TOKEN_RATIO,
    NEW_TOKEN_RATIO_DECAY,
    NewTokenRatio,
)
from sgl.core.scheduler.req import Req
from tests.core.engine_utils import make_engine, settled_info

FIXED = {"temperature": 0.0, "max_new_tokens": 32, "ignore_eos": True}
SMALL_POOL = {"max_total_tokens": 128, "max_running_requests": 16}  # three requests of 8 + 32 tokens fit


def _req(**params: Any) -> Req:
    sp = SamplingParams(**{"max_new_tokens": 100, **params})
    return Req(GenerateReq(rid="r", input_ids=[1, 2, 3], sampling_params=sp), eos_ids={0}, arrival=0)


def _decayed(ratio: NewTokenRatio) -> NewTokenRatio:
    for _ in range(int(INIT_NEW_TOKEN_RATIO / NEW_TOKEN_RATIO_DECAY) + 10):
        ratio.decay()
    return ratio


# the rule -----------------------------------------------------------------------------------------------------------
def test_only_ignore_eos_without_any_other_stop_makes_the_length_known() -> None:
    assert _req(ignore_eos=True).output_len_known
    assert _req(ignore_eos=True, min_new_tokens=5).output_len_known  # min_new_tokens cannot shorten it
    assert _req(ignore_eos=True, stop=[]).output_len_known  # an empty list stops nothing
    assert not _req().output_len_known  # EOS may come at any step
    assert not _req(ignore_eos=True, stop="END").output_len_known
    assert not _req(ignore_eos=True, stop_token_ids=[7]).output_len_known
    for constraint in ({"json_schema": '{"type": "string"}'}, {"regex": "a+"}, {"ebnf": 'root ::= "a"'},
                       {"choices": ["yes", "no"]}):
        assert not _req(ignore_eos=True, **constraint).output_len_known, constraint
    attached = _req(ignore_eos=True)
    attached.feature_may_stop = True  # a feature (a grammar) the scheduler attached ends it when it ends
    assert not attached.output_len_known


# the reserve --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decay", [False, True])
def test_known_length_reserves_all_remaining_tokens_and_unknown_remaining_times_ratio(decay: bool) -> None:
    ratio = _decayed(NewTokenRatio(1.0)) if decay else NewTokenRatio(1.0)
    value = MIN_NEW_TOKEN_RATIO if decay else INIT_NEW_TOKEN_RATIO
    assert ratio.value == pytest.approx(value)
    known, unknown = _req(ignore_eos=True), _req()
    assert ratio.reserve([known]) == 100
    assert ratio.reserve([unknown]) == int(100 * ratio.value)
    known.output_ids = [5] * 40
    assert ratio.reserve([known]) == 60  # what is left of max_new_tokens
    others = [_req(max_new_tokens=7) for _ in range(3)]
    # the uncertain part is rounded down once over all requests, as the decode reserve always was
    assert ratio.reserve([known, *others]) == 60 + int(21 * ratio.value)
    assert ratio.reserve([]) == 0


def test_known_length_reserve_ignores_conservativeness() -> None:
    """--schedule-conservativeness scales an estimate; a known length is not one."""
    for c in (0.3, 2.0):
        ratio = NewTokenRatio(c)
        assert ratio.reserve([_req(ignore_eos=True)]) == 100
        assert ratio.reserve([_req()]) == int(100 * INIT_NEW_TOKEN_RATIO * c)


# the floor ----------------------------------------------------------------------------------------------------------
def test_known_length_finishes_do_not_move_the_floor() -> None:
    ratio = _decayed(NewTokenRatio(1.0))
    for _ in range(50):
        ratio.observe_finish("length", 2, 2, known=True)  # sgl bench offline's warm-up, for instance
    assert ratio.floor is None and ratio.mean_fraction is None
    assert ratio.value == pytest.approx(MIN_NEW_TOKEN_RATIO)
    for _ in range(10):
        ratio.observe_finish("stop", 20, 100)
    for _ in range(10):
        ratio.observe_finish("length", 100, 100, known=True)
    assert ratio.mean_fraction == pytest.approx(0.2)  # only the requests of uncertain length count
    assert ratio.floor == pytest.approx(0.2)


# the engine ---------------------------------------------------------------------------------------------------------
@contextmanager
def _old_behaviour(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every length uncertain, as before known lengths were recognised: ratio x remaining for all, all counted."""
    with monkeypatch.context() as m:
        m.setattr(Req, "output_len_known", property(lambda self: False))
        yield


def _prompts() -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(5, 200) for _ in range(8)] for _ in range(12)]


def _run(engine: sgl.Engine, prompts: list[list[int]], params: list[dict[str, Any]]) -> tuple[int, list[list[int]]]:
    before = settled_info(engine)["retractions"]
    outs = engine.generate(input_ids=prompts, sampling_params=[dict(p) for p in params])
    info = settled_info(engine)
    # NOTE: no KV leaked: every slot is free or in the cache, none locked or held by a request
    assert info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0
    assert info["available_tokens"] + info["evictable_tokens"] == info["max_total_tokens"]
    return info["retractions"] - before, [o["output_ids"] for o in outs]


def _old_then_new(
    demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool, prompts: list[list[int]],
    params: list[dict[str, Any]],
) -> tuple[tuple[int, list[list[int]]], tuple[int, list[list[int]]], float | None]:
    """The workload on a cold small-pool engine with the old reserve, then on one with the new: (retractions,
    outputs) of each, and the new engine's learned floor."""
    kwargs = {**SMALL_POOL, "force_overlap_schedule": overlap}
    with _old_behaviour(monkeypatch), make_engine(demo_model_dir, **kwargs) as old:
        old_run = _run(old, prompts, params)
    with make_engine(demo_model_dir, **kwargs) as new:
        new_run = _run(new, prompts, params)
        floor = new.runtime.scheduler.token_ratio.floor
    return old_run, new_run, floor


@pytest.mark.parametrize("overlap", [False, True])
def test_cold_fixed_length_workload_never_retracts_on_its_first_run(
    demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    """12 ignore_eos requests of 8 + 32 tokens in a pool of 128: reserving 0.7 of their future admits four and
    retracts before any has finished; reserving all of it admits three and never retracts, with the same tokens.
    The finishes leave the learned floor unset, so the run says nothing about the next workload's lengths."""
    (old_retractions, old_outputs), (new_retractions, new_outputs), floor = _old_then_new(
        demo_model_dir, monkeypatch, overlap, _prompts(), [FIXED] * 12)
    assert old_retractions > 0, old_retractions  # the workload did retract before
    assert new_retractions == 0
    assert floor is None
    assert all(len(ids) == 32 for ids in new_outputs)
    assert new_outputs == old_outputs


@pytest.mark.parametrize("overlap", [False, True])
def test_mixed_known_and_uncertain_lengths_give_the_same_tokens_without_leaking(
    demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    """Every other request may stop early (EOS and a stop token its greedy output reaches): the known-length half
    reserves in full, the rest by the ratio; outputs match the old reserve and a pool large enough for all."""
    prompts = _prompts()
    with make_engine(demo_model_dir) as big:
        _, reference = _run(big, prompts, [FIXED] * 12)
    params = [FIXED if i % 2 == 0 else {"temperature": 0.0, "max_new_tokens": 32, "stop_token_ids": [reference[i][12]]}
              for i in range(12)]
    (_, old_outputs), (_, new_outputs), floor = _old_then_new(demo_model_dir, monkeypatch, overlap, prompts, params)
    assert new_outputs == old_outputs
    for i, ids in enumerate(new_outputs):
        if i % 2 == 0:
            assert ids == reference[i]
        else:
            assert len(ids) <= 13 and ids == reference[i][: len(ids)], (i, ids)
    uncertain = [len(ids) / 32 for ids in new_outputs[1::2]]
    assert floor == pytest.approx(sum(uncertain) / len(uncertain))  # learned from the uncertain half alone


@pytest.mark.timeout(120)
def test_a_lone_chunked_prompt_in_a_tight_pool_finishes_its_last_chunk(tmp_path: Path) -> None:
    """The chunked request's decodes were reserved twice (in the budget and again as its own future), so once the
    others had finished, its last chunk never fitted a 128-token pool and the engine spun forever."""
    from sgl.core.demo_model import write_demo_model
    from tests.core.engine_utils import PROMPTS

    model = write_demo_model(tmp_path / "one_layer", seed=3, num_layers=1)
    params = {"temperature": 0.0, "max_new_tokens": 48}
    with make_engine(model, max_total_tokens=1024) as roomy:
        want = [o["output_ids"] for o in roomy.generate(PROMPTS, params)]
    with make_engine(model, max_total_tokens=128, chunked_prefill_size=8) as tight:
        got = [o["output_ids"] for o in tight.generate(PROMPTS, params)]
        info = settled_info(tight)
    assert got == want
    assert info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0
