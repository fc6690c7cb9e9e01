"""--num-continuous-decode-steps: decode runs give the tokens of single steps, free what they wrote past a stop, and
run fewer scheduler steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.core.engine_utils import GREEDY, PROMPTS, greedy_ids, make_engine, settled_info


def _run(model: Path, params: Any, **kwargs: Any) -> tuple[list[list[int]], dict[str, Any]]:
    with make_engine(model, **kwargs) as engine:
        outs = engine.generate(PROMPTS, params)
        info = settled_info(engine)
    assert info["locked_tokens"] == 0 and info["request_owned_tokens"] == 0
    assert info["available_tokens"] + info["evictable_tokens"] == info["max_total_tokens"]
    return [o["output_ids"] for o in outs], info


@pytest.mark.parametrize("overlap,page_size", [(False, 1), (True, 1), (False, 16), (True, 16)])
def test_stops_inside_a_run_give_single_step_tokens_and_free_the_slots_written_past_them(
    demo_model_dir: Path, overlap: bool, page_size: int
) -> None:
    """Stop tokens and stop strings met mid-run: the run's later tokens are dropped, and the KV slots it wrote for
    them go back (the invariant check after every step and the settled pool prove it)."""
    base = _run(demo_model_dir, GREEDY)[0]
    params = [{"temperature": 0.0, "max_new_tokens": 30, "stop_token_ids": [ids[5 + i % 7]]} if i % 2 else
              {"temperature": 0.0, "max_new_tokens": 30 - i, "ignore_eos": True} for i, ids in enumerate(base)]
    kwargs = {"force_overlap_schedule": overlap, "page_size": page_size}
    single, _ = _run(demo_model_dir, params, **kwargs)
    runs, info = _run(demo_model_dir, params, num_continuous_decode_steps=6, **kwargs)
    assert runs == single
    assert any(len(ids) < 30 - i for i, ids in enumerate(runs) if i % 2), "no request stopped early"
    assert all(len(ids) == 30 - i for i, ids in enumerate(runs) if not i % 2), "max_new_tokens not kept"
    assert info["steps"] < info["decode_steps"], "no decode ran as a run"


def test_seeded_sampling_and_host_dependent_rows_match_single_steps(demo_model_dir: Path) -> None:
    """Seeded sampling draws with the same per-token seeds inside a run; rows whose sampling needs host tokens
    (penalties, min_new_tokens) make their batch decode step by step."""
    sampled = [{"temperature": 0.9, "max_new_tokens": 20, "seed": 3 + i, "ignore_eos": True} for i in range(6)]
    assert _run(demo_model_dir, sampled, num_continuous_decode_steps=4)[0] == _run(demo_model_dir, sampled)[0]
    mixed = [*sampled[:4], {"temperature": 0.0, "max_new_tokens": 20, "frequency_penalty": 0.7, "ignore_eos": True},
             {"temperature": 0.0, "max_new_tokens": 20, "min_new_tokens": 18}]
    runs, _ = _run(demo_model_dir, mixed, num_continuous_decode_steps=4, force_overlap_schedule=True)
    assert runs == _run(demo_model_dir, mixed, force_overlap_schedule=True)[0]


def test_a_run_never_retracts_and_falls_back_to_single_steps_when_the_pool_is_short(demo_model_dir: Path) -> None:
    """In a pool too small for every request's run, the decode falls back to one step before it would retract."""
    params = {**GREEDY, "stop": ["\u2603 never written \u2603"]}
    small = {"max_total_tokens": 192, "schedule_conservativeness": 0.2, "max_running_requests": 8}
    with make_engine(demo_model_dir, **small) as engine:
        single = greedy_ids(engine, PROMPTS, params)
    with make_engine(demo_model_dir, num_continuous_decode_steps=8, **small) as engine:
        got = greedy_ids(engine, PROMPTS, params)
        info = settled_info(engine)
    assert got == single
    assert info["available_tokens"] + info["evictable_tokens"] == info["max_total_tokens"]


def test_num_continuous_decode_steps_must_be_positive() -> None:
    from sgl.core.config import ServerArgs

    with pytest.raises(ValueError, match="num_continuous_decode_steps must be >= 1"):
        ServerArgs(num_continuous_decode_steps=0)
