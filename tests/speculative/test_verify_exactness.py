"""The core seam, through a scripted proposer: verification accepts exactly the drafts the target would have produced,
rejected drafts give their KV slots back, and requests end exactly where plain decoding ends them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgl.core.sampling.params import SamplingParams
from tests.speculative.oracle import ScriptedDrafts, run, runtime, with_feature


def _reqs(params: SamplingParams, n: int = 4) -> list[tuple[str, list[int], SamplingParams]]:
    return [(f"r{i}", [(11 * j + 5 * i) % 200 + 5 for j in range(6 + 3 * i)], params) for i in range(n)]


GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("page_size", [1, 4])
def test_correct_drafts_are_all_accepted_and_tokens_are_unchanged(demo_model_dir: Path, page_size: int) -> None:
    rt = runtime(demo_model_dir, page_size=page_size)
    plain = run(rt.scheduler, _reqs(GREEDY))
    oracle = ScriptedDrafts({rid: ids for rid, (ids, _) in plain.items()}, k=4)
    spec = with_feature(rt, oracle)
    got = run(spec, [(f"{rid}", ids, p) for rid, ids, p in _reqs(GREEDY)])
    assert got == plain
    assert oracle.drafted > 0 and oracle.accepted == oracle.drafted
    # each verify emits up to 5 tokens: 23 decoded tokens per request take ceil(23 / 5) = 5 verify steps
    assert spec.counters.decode_steps <= 6


@pytest.mark.parametrize("page_size", [1, 4])
def test_wrong_drafts_are_rejected_their_slots_freed_and_tokens_are_unchanged(
    demo_model_dir: Path, page_size: int
) -> None:
    rt = runtime(demo_model_dir, page_size=page_size)
    plain = run(rt.scheduler, _reqs(GREEDY))
    oracle = ScriptedDrafts({rid: ids for rid, (ids, _) in plain.items()}, k=4,
                            corrupt=lambda pos, tok: tok if pos % 3 else (tok + 1) % 256)
    got = run(with_feature(rt, oracle), _reqs(GREEDY))
    assert got == plain
    assert 0 < oracle.accepted < oracle.drafted


def test_stops_inside_an_accepted_run_end_the_request_where_plain_decoding_does(demo_model_dir: Path) -> None:
    rt = runtime(demo_model_dir)
    reference = run(rt.scheduler, _reqs(GREEDY))
    script = {rid: ids for rid, (ids, _) in reference.items()}
    cases = {
        "r0": SamplingParams(max_new_tokens=7, temperature=0.0, ignore_eos=True),  # length, mid-run
        "r1": SamplingParams(max_new_tokens=24, temperature=0.0, ignore_eos=True, stop_token_ids=[script["r1"][5]]),
        "r2": SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True),
        "r3": SamplingParams(max_new_tokens=24, temperature=0.0, ignore_eos=True, min_new_tokens=9,
                             stop_token_ids=[script["r3"][2]]),
    }
    reqs = [(rid, ids, cases[rid]) for rid, ids, _ in _reqs(GREEDY)]
    plain = run(rt.scheduler, reqs)
    oracle = ScriptedDrafts(script, k=6)
    assert run(with_feature(rt, oracle), reqs) == plain
    assert plain["r1"][1] == "stop" and len(plain["r0"][0]) == 7
    assert oracle.accepted > 0


def test_seeded_sampling_with_drafts_gives_the_tokens_of_plain_decoding(demo_model_dir: Path) -> None:
    rt = runtime(demo_model_dir)
    params = SamplingParams(max_new_tokens=20, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True,
                            repetition_penalty=1.1)
    plain = run(rt.scheduler, _reqs(params))
    oracle = ScriptedDrafts({rid: ids for rid, (ids, _) in plain.items()}, k=3)
    assert run(with_feature(rt, oracle), _reqs(params)) == plain
    assert oracle.accepted == oracle.drafted > 0
