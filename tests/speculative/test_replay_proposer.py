"""The replay benchmark's algorithm (benchmarks/replay_proposer.py) on the demo model: EAGLE-3's draft forwards with a
dummy-weight draft and the target's verify forward, each draft accepted by a seeded draw at the configured rate
(its ``accept`` override). Never rejected, every draft is accepted (num_steps + 1 tokens per verify forward); always
rejected, none is and the emitted tokens are the target's own; the benchmark's measured acceptance matches the
expected one. The algorithm is registered in-process through the hook, as the benchmark does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sgl
from benchmarks import spec_replay_plugin
from benchmarks.eagle3_dummy_draft import eagle3_config, write_eagle3_draft_config
from benchmarks.replay_proposer import corruption_for, expected_accept_length
from benchmarks.spec_replay_plugin import ALGORITHM, PLUGIN, ReplayArgs
from sgl.core.plugins import add_in_process_plugin, get_plugins, remove_in_process_plugin
from tests.core.engine_utils import make_engine, settled_info

STEPS = 3
# NOTE: 1 token from the prefill, then 6 verify forwards of STEPS + 1: every verify has its full draft budget
PARAMS = {"temperature": 0.0, "max_new_tokens": 1 + 6 * (STEPS + 1), "ignore_eos": True}
PROMPTS = [[(7 * i + 13 * j) % 1900 + 20 for j in range(10 + i)] for i in range(4)]


@pytest.fixture(scope="module")
def replay_plugin() -> Iterator[None]:
    add_in_process_plugin(PLUGIN, spec_replay_plugin)
    yield
    remove_in_process_plugin(PLUGIN)


@pytest.fixture(scope="module")
def recorded(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[int]]]:
    """(dummy EAGLE-3 draft dir, plain greedy tokens)."""
    engine = make_engine(demo_model_dir, load_format="dummy")  # NOTE: the draft has no weights: both are dummy
    try:
        plain = [o["output_ids"] for o in engine.generate(input_ids=PROMPTS, sampling_params=PARAMS)]
    finally:
        engine.shutdown()
    return write_eagle3_draft_config(demo_model_dir, tmp_path_factory.mktemp("replay") / "draft"), plain


def replay_engine(model: Path, draft: Path, corrupt: float, **kw: Any) -> sgl.Engine:
    return make_engine(
        model, load_format="dummy", speculative_algorithm=ALGORITHM, speculative_draft_model_path=str(draft),
        speculative_num_steps=STEPS, speculative_eagle_topk=1, disable_speculative_gate=True,
        plugin_args={PLUGIN: ReplayArgs(corrupt=corrupt, seed=7)}, **kw,
    )


def test_the_dummy_draft_is_a_config_in_the_public_eagle3_layout(demo_model_dir: Path, tmp_path: Path) -> None:
    target = json.loads((Path(sgl.__file__).parent / "core/model/configs/llama-3.1-8b.json").read_text())
    cfg = eagle3_config(target)
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
    assert (cfg["hidden_size"], cfg["num_key_value_heads"], cfg["vocab_size"], cfg["draft_vocab_size"]) == (
        4096, 8, 128256, 32000)
    draft = write_eagle3_draft_config(demo_model_dir, tmp_path / "draft")
    assert [p.name for p in draft.iterdir()] == ["config.json"]  # NOTE: no weights: it loads with --load-format dummy


# NOTE: nothing accepted, 24 tokens take 23 verify forwards and a plain step (a request's last token has no room for
# drafts within max_new_tokens)
@pytest.mark.parametrize(("corrupt", "accept_length", "verifies"), [(0.0, STEPS + 1.0, 6), (1.0, 1.0, 23)])
def test_drawn_acceptance_gives_the_expected_length_and_frees_the_rejected_kv(
    demo_model_dir: Path, replay_plugin: None, recorded: tuple[Path, list[list[int]]], corrupt: float,
    accept_length: float, verifies: int,
) -> None:
    draft, plain = recorded
    engine = replay_engine(demo_model_dir, draft, corrupt)
    try:
        outs = [o["output_ids"] for o in engine.generate(input_ids=PROMPTS, sampling_params=PARAMS)]
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert [len(o) for o in outs] == [PARAMS["max_new_tokens"]] * len(PROMPTS)
    if corrupt == 1.0:
        assert outs == plain  # nothing accepted: every emitted token is the target's own
    assert info["speculative_algorithm"] == ALGORITHM
    assert info["spec_verify_rows"] == verifies * len(PROMPTS), info
    assert info["spec_drafted_tokens"] >= STEPS * (verifies - 2) * len(PROMPTS)  # full depth but near the end
    assert info["avg_spec_accept_length"] == accept_length == expected_accept_length(corrupt, STEPS)
    assert info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0


def test_the_replay_algorithm_is_known_only_while_its_plugin_is_added(replay_plugin: None) -> None:
    assert ALGORITHM in get_plugins().speculative_algorithms
    remove_in_process_plugin(PLUGIN)
    try:
        assert ALGORITHM not in get_plugins().speculative_algorithms
    finally:
        add_in_process_plugin(PLUGIN, spec_replay_plugin)


def test_a_rate_outside_0_1_and_a_tree_are_refused(
    demo_model_dir: Path, replay_plugin: None, recorded: tuple[Path, list[list[int]]]
) -> None:
    draft, _ = recorded
    with pytest.raises(ValueError, match="ReplayArgs.corrupt 1.5: a probability"):
        replay_engine(demo_model_dir, draft, 1.5)
    with pytest.raises(ValueError, match="--speculative-eagle-topk 2: EAGLE3_REPLAY replays chains"):
        make_engine(demo_model_dir, load_format="dummy", speculative_algorithm=ALGORITHM,
                    speculative_draft_model_path=str(draft), speculative_eagle_topk=2)


@pytest.mark.parametrize("accept", [1.0, 2.2, 3.0, 4.0])
def test_corruption_for_inverts_the_expected_acceptance(accept: float) -> None:
    assert expected_accept_length(corruption_for(accept, STEPS), STEPS) == pytest.approx(accept, abs=1e-5)
    with pytest.raises(ValueError, match="gives 1 to 4"):
        corruption_for(4.5, STEPS)


def test_the_benchmark_measures_the_acceptance_it_asks_for_on_the_demo_model() -> None:
    """``python -m benchmarks.spec_replay demo --batch 1,4 --steps 3`` (gate off: every decode step verifies, so each
    row averages every step): always rejected gives 1.0, never rejected 4.0 but for a request's last verify (its budget
    ends within max_new_tokens: 127 tokens take 31 verifies of 4 and one of 3), the rate of ``--accept 3.0`` about
    3.0 (seeded draws; ~128 to ~512 of them per row)."""
    from benchmarks.spec_replay import main

    rows = main(["demo", "--batch", "1,4", "--steps", "3", "--reps", "1", "--new-tokens", "128", "--prompt-len", "16",
                 "--ngram-draft-tokens", "4", "--disable-gate"])
    replay = [r for r in rows if r["variant"] == "replay steps=3"]
    assert sorted((r["batch"], r["expected_accept_length"]) for r in replay) == [
        (b, e) for b in (1, 4) for e in (1.0, 3.0, 4.0)], replay
    for r in replay:
        tolerance = {1.0: 0.0, 4.0: 0.05}.get(r["expected_accept_length"], 0.35)
        assert abs(r["accept_length"] - r["expected_accept_length"]) <= tolerance, r
        assert r["decode_tok_s"] > 0 and r["requests"] == r["batch"]
    off = [r for r in rows if r["variant"] == "off"]
    assert [r["batch"] for r in off] == [1, 4] and all(r["decode_tok_s"] > 0 for r in off)
    assert 1.0 <= next(r for r in rows if r["variant"].startswith("NGRAM"))["accept_length"] <= 4.0
    assert ALGORITHM not in get_plugins().speculative_algorithms  # the script removed its plugin
