"""The admission ratio learns how much of max_new_tokens finished requests used (sgl/core/scheduler/new_token_ratio.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import sgl
from sgl.core.scheduler.new_token_ratio import (
    INIT_NEW_TOKEN_RATIO,
    MIN_NEW_TOKEN_RATIO,
    NEW_TOKEN_RATIO_DECAY,
    NewTokenRatio,
)
from sgl.core.scheduler.prefill_adder import PrefillAdder, Stop
from tests.core.engine_utils import make_engine, settled_info


def _decay_fully(r: NewTokenRatio) -> None:
    for _ in range(int(INIT_NEW_TOKEN_RATIO / NEW_TOKEN_RATIO_DECAY) + 10):
        r.decay()


def test_without_finished_requests_the_ratio_decays_and_resets_exactly_as_before() -> None:
    r = NewTokenRatio(1.0)
    assert r.floor is None and r.mean_fraction is None
    assert r.value == pytest.approx(INIT_NEW_TOKEN_RATIO)
    r.decay()
    assert r.value == pytest.approx(INIT_NEW_TOKEN_RATIO - NEW_TOKEN_RATIO_DECAY)
    _decay_fully(r)
    assert r.value == pytest.approx(MIN_NEW_TOKEN_RATIO)
    r.reset()
    assert r.value == pytest.approx(INIT_NEW_TOKEN_RATIO)


def test_requests_that_run_to_max_new_tokens_floor_the_ratio_near_one() -> None:
    r = NewTokenRatio(1.0)
    _decay_fully(r)
    for _ in range(10):
        r.observe_finish("length", 1024, 1024)
    assert r.floor == pytest.approx(1.0)
    assert r.value == pytest.approx(1.0)  # lifted at once, not on the next decode step
    _decay_fully(r)
    assert r.value == pytest.approx(1.0)
    r.reset()  # a retraction resets to max(initial, floor)
    assert r.value == pytest.approx(1.0)


def test_requests_that_stop_early_keep_admission_aggressive() -> None:
    r = NewTokenRatio(1.0)
    for _ in range(50):
        r.observe_finish("stop", 20, 100)
    assert r.mean_fraction == pytest.approx(0.2)
    assert r.floor == pytest.approx(0.2)
    assert r.value == pytest.approx(INIT_NEW_TOKEN_RATIO)  # the floor is below the decaying ratio: no change yet
    _decay_fully(r)
    assert r.value == pytest.approx(0.2)
    r.reset()
    assert r.value == pytest.approx(INIT_NEW_TOKEN_RATIO)


def test_floor_is_clamped_and_scaled_by_conservativeness() -> None:
    tiny = NewTokenRatio(1.0)
    tiny.observe_finish("stop", 1, 1000)
    assert tiny.floor == pytest.approx(MIN_NEW_TOKEN_RATIO)  # never below the old minimum
    half = NewTokenRatio(0.5)
    half.observe_finish("length", 64, 64)
    assert half.floor == pytest.approx(0.5)
    assert half.value == pytest.approx(0.5)  # above the scaled start of 0.35
    half_early = NewTokenRatio(0.5)
    half_early.observe_finish("stop", 1, 100)
    assert half_early.floor == pytest.approx(MIN_NEW_TOKEN_RATIO)  # 0.1 x 0.5 is still held at the minimum
    double = NewTokenRatio(2.0)
    double.observe_finish("length", 64, 64)
    assert double.floor == pytest.approx(2.0)


def test_window_forgets_the_previous_workload() -> None:
    r = NewTokenRatio(1.0, window=8)
    for _ in range(8):
        r.observe_finish("stop", 1, 10)
    assert r.floor == pytest.approx(MIN_NEW_TOKEN_RATIO)
    for i in range(7):
        r.observe_finish("length", 10, 10)
        assert r.floor == pytest.approx((0.1 * (7 - i) + 1.0 * (i + 1)) / 8)
    r.observe_finish("length", 10, 10)
    assert r.mean_fraction == pytest.approx(1.0)
    assert r.floor == pytest.approx(1.0)


def test_aborts_and_zero_max_new_tokens_are_not_counted() -> None:
    r = NewTokenRatio(1.0)
    r.observe_finish("abort", 3, 100)
    r.observe_finish("length", 0, 0)
    assert r.floor is None and r.mean_fraction is None
    r.observe_finish("stop", 50, 100)
    r.observe_finish("abort", 100, 100)
    assert r.mean_fraction == pytest.approx(0.5)


def test_window_zero_turns_learning_off() -> None:
    r = NewTokenRatio(1.0, window=0)
    r.observe_finish("length", 100, 100)
    assert r.floor is None
    _decay_fully(r)
    assert r.value == pytest.approx(MIN_NEW_TOKEN_RATIO)


def test_the_lone_request_of_an_idle_step_still_reserves_its_future_for_the_next() -> None:
    """Admitted on its prompt alone (its future need not fit), but its decodes are kept out of the others' budget."""
    adder = PrefillAdder(token_budget=1000, kv_budget=100, chunk_size=None, idle=True)
    assert adder.add(10, 200, 1).extend_len == 10  # 10 + 200 > 100: admitted anyway, it is alone
    assert adder.add(10, 10, 1).stop is Stop.KV_BUDGET  # nothing left once its 200 future tokens are reserved


# NOTE: a stop string the tiny model never writes: the requests run to max_new_tokens like ignore_eos ones, but their
# length is not known in advance, so admission must estimate it (ignore_eos alone reserves it in full)
NEVER_WRITTEN = "\u2603 never written \u2603"


def _fixed_length_workload() -> tuple[list[list[int]], dict]:
    rng = random.Random(0)
    prompts = [[rng.randrange(5, 200) for _ in range(8)] for _ in range(12)]
    return prompts, {"temperature": 0.0, "max_new_tokens": 32, "ignore_eos": True, "stop": [NEVER_WRITTEN]}


def _run_twice(engine: sgl.Engine, prompts: list[list[int]], params: dict) -> tuple[list[int], list[list[list[int]]]]:
    retractions, outputs = [], []
    for _ in range(2):
        before = settled_info(engine)["retractions"]
        outs = engine.generate(input_ids=prompts, sampling_params=dict(params))
        retractions.append(settled_info(engine)["retractions"] - before)
        outputs.append([o["output_ids"] for o in outs])
    return retractions, outputs


def test_fixed_length_workload_stops_retracting_once_lengths_are_learned(demo_model_dir: Path) -> None:
    """12 requests of 8 + 32 tokens (of uncertain length: a stop string) in a pool of 128 (three fit): the old ratio
    (0.7, decaying) admits four and retracts on every run; with the learned floor the second run, after the first
    run's finishes, retracts none. Greedy outputs are the same either way."""
    prompts, params = _fixed_length_workload()
    kwargs = {"max_total_tokens": 128, "max_running_requests": 16}
    with make_engine(demo_model_dir, **kwargs) as old:
        old.runtime.scheduler.token_ratio = NewTokenRatio(1.0, window=0)  # learning off: the old behaviour
        old_retractions, old_outputs = _run_twice(old, prompts, params)
    with make_engine(demo_model_dir, **kwargs) as new:
        new_retractions, new_outputs = _run_twice(new, prompts, params)
        ratio = settled_info(new)["new_token_ratio"]
    assert old_retractions[1] > 0, old_retractions  # the workload does force retractions today
    assert new_retractions[1] == 0, new_retractions
    assert sum(new_retractions) < sum(old_retractions)
    assert ratio == pytest.approx(1.0)
    assert all(len(ids) == 32 for ids in new_outputs[0])
    assert old_outputs[0] == old_outputs[1] == new_outputs[0] == new_outputs[1]
