"""Every scheduling optimisation must give exactly the greedy tokens of the plain path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.engine_utils import GREEDY, PROMPTS, greedy_ids, make_engine, settled_info


@pytest.fixture(scope="module")
def reference(demo_model_dir: Path) -> list[list[int]]:
    """One request at a time, no radix cache, no chunking: the plainest path."""
    with make_engine(demo_model_dir, disable_radix_cache=True, chunked_prefill_size=-1) as engine:
        return [greedy_ids(engine, [p])[0] for p in PROMPTS]


@pytest.mark.parametrize(
    "label,kwargs",
    [
        ("radix-on-batched", {}),
        ("radix-off-batched", {"disable_radix_cache": True}),
        ("tiny-chunks", {"chunked_prefill_size": 8}),
        ("tiny-chunks-no-radix", {"chunked_prefill_size": 8, "disable_radix_cache": True}),
        ("page-16", {"page_size": 16}),
        ("page-16-tiny-chunks", {"page_size": 16, "chunked_prefill_size": 16}),
        ("fcfs", {"schedule_policy": "fcfs"}),
        ("dfs-weight", {"schedule_policy": "dfs-weight"}),
        ("overlap", {"force_overlap_schedule": True}),
        ("mixed-chunk", {"enable_mixed_chunk": True, "chunked_prefill_size": 8}),
        ("mixed-chunk-overlap-page-16", {"enable_mixed_chunk": True, "force_overlap_schedule": True, "page_size": 16,
                                         "chunked_prefill_size": 16}),
        ("overlap-page-16-chunks", {"force_overlap_schedule": True, "page_size": 16, "chunked_prefill_size": 16}),
        ("decode-runs-4", {"num_continuous_decode_steps": 4}),
        ("layer-fusion", {"enable_layer_fusion": True}),
        ("decode-runs-5-overlap-page-16", {"num_continuous_decode_steps": 5, "force_overlap_schedule": True,
                                           "page_size": 16}),
    ],
)
def test_greedy_tokens_identical_across_scheduling_options(
    demo_model_dir: Path, reference: list[list[int]], label: str, kwargs: dict
) -> None:
    with make_engine(demo_model_dir, **kwargs) as engine:
        got = greedy_ids(engine, PROMPTS)
        # a second round hits the radix cache for every prompt (when it is on)
        again = greedy_ids(engine, PROMPTS)
        info = settled_info(engine)
    assert (info["overlapped_steps"] > 0) == bool(kwargs.get("force_overlap_schedule")), label
    assert (info["mixed_steps"] > 0) == bool(kwargs.get("enable_mixed_chunk")), label
    assert got == reference, label
    assert again == reference, label


@pytest.mark.parametrize("page_size,overlap,mixed", [(1, False, False), (16, False, False), (1, True, True)])
def test_tiny_kv_pool_forces_retraction_and_keeps_tokens(
    demo_model_dir: Path, reference: list[list[int]], page_size: int, overlap: bool, mixed: bool
) -> None:
    # six prompts of up to ~30 tokens, each growing by 32: ~380 tokens at the end, in a pool of 192; a low
    # conservativeness admits them all at once, so decoding must run out of slots. NOTE: a stop string that is never
    # written makes their length uncertain (ignore_eos alone would reserve it in full, whatever the conservativeness)
    with make_engine(
        demo_model_dir, max_total_tokens=192, page_size=page_size, schedule_conservativeness=0.2, max_running_requests=8,
        force_overlap_schedule=overlap, enable_mixed_chunk=mixed,
    ) as engine:
        got = greedy_ids(engine, PROMPTS, {**GREEDY, "stop": ["\u2603 never written \u2603"]})
        info = settled_info(engine)
    assert got == reference
    assert info["retractions"] > 0
    assert info["available_tokens"] + info["evictable_tokens"] == info["max_total_tokens"]
    assert info["locked_tokens"] == 0


def test_overlap_finishing_by_stop_token_and_abort_mid_chain_match_the_plain_loop(demo_model_dir: Path) -> None:
    """Requests that stop on a token (unknown until their step resolves) ride one extra chained step; their outputs,
    and the pool accounting after them, must equal the plain loop's."""
    with make_engine(demo_model_dir) as plain:
        base = greedy_ids(plain, PROMPTS)
    stops = [ids[7 + i % 5] for i, ids in enumerate(base)]  # a token each request meets mid-way
    params = [{"temperature": 0.0, "max_new_tokens": 32, "stop_token_ids": [t]} for t in stops]
    results = {}
    for overlap in (False, True):
        with make_engine(demo_model_dir, force_overlap_schedule=overlap) as engine:
            outs = engine.generate(PROMPTS, params)
            results[overlap] = [o["output_ids"] for o in outs]
            info = settled_info(engine)
            assert info["locked_tokens"] == 0 and info["request_owned_tokens"] == 0
            assert info["available_tokens"] + info["evictable_tokens"] == info["max_total_tokens"]
    assert results[True] == results[False]
    assert all(ids[-1] == t and len(ids) < 32 for ids, t in zip(results[True], stops))


def test_overlap_with_host_dependent_sampling_matches_the_plain_loop(demo_model_dir: Path) -> None:
    """Penalties, min_new_tokens and seeded sampling need the previous token on the host: chained steps defer
    their sampling until it resolved, and give exactly the plain loop's tokens."""
    params = [
        {"temperature": 0.0, "max_new_tokens": 24, "frequency_penalty": 0.8, "ignore_eos": True},
        {"temperature": 0.0, "max_new_tokens": 24, "repetition_penalty": 1.3, "ignore_eos": True},
        {"temperature": 1.0, "max_new_tokens": 24, "seed": 7, "presence_penalty": 0.5, "ignore_eos": True},
        {"temperature": 0.0, "max_new_tokens": 24, "min_new_tokens": 20},
        {"temperature": 0.9, "max_new_tokens": 24, "seed": 11, "ignore_eos": True},
        {"temperature": 0.0, "max_new_tokens": 24, "ignore_eos": True},
    ]
    results = {}
    for overlap in (False, True):
        with make_engine(demo_model_dir, force_overlap_schedule=overlap) as engine:
            results[overlap] = [o["output_ids"] for o in engine.generate(PROMPTS, params)]
            if overlap:
                assert engine.get_server_info()["overlapped_steps"] > 0
    assert results[True] == results[False]
