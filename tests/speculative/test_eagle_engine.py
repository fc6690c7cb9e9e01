"""EAGLE and EAGLE3 speculation on the demo model, with draft heads written here in the public checkpoint layouts and
seeded random weights: the greedy tokens of plain decoding whatever the draft proposes, grammar requests beside
drafting ones, no KV slot kept after the runs, and the flags that cannot be honoured refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import sgl
from tests.core.engine_utils import GREEDY, PROMPTS, greedy_ids, make_engine, plain_greedy_ids, settled_info
from tests.speculative.eagle_drafts import write_eagle3_draft, write_eagle_draft, write_mirroring_pair

PARAMS = {"temperature": 0.0, "max_new_tokens": 20, "ignore_eos": True}


def spec_engine(model: Path | str, **kwargs: Any) -> sgl.Engine:
    """An engine that drafts at every decode step (the speculation gate off): these tests measure the machinery."""
    kwargs.setdefault("disable_speculative_gate", True)
    return make_engine(model, **kwargs)


@pytest.fixture(scope="module")
def plain_tokens(demo_model_dir: Path) -> list[list[int]]:
    return plain_greedy_ids(demo_model_dir, PROMPTS, PARAMS)


@pytest.fixture(scope="module")
def drafts(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eagle")
    return {"EAGLE": write_eagle_draft(root / "eagle", demo_model_dir),
            "EAGLE3": write_eagle3_draft(root / "eagle3", demo_model_dir)}


@pytest.mark.parametrize("algorithm", ["EAGLE", "EAGLE3"])
def test_a_random_eagle_draft_leaves_the_greedy_tokens_unchanged(
    demo_model_dir: Path, drafts: dict[str, Path], plain_tokens: list[list[int]], algorithm: str
) -> None:
    engine = spec_engine(demo_model_dir, speculative_algorithm=algorithm, page_size=4 if algorithm == "EAGLE" else 1,
                         speculative_draft_model_path=str(drafts[algorithm]), speculative_num_steps=3,
                         speculative_eagle_topk=1, speculative_num_draft_tokens=4)
    try:
        outs = engine.generate(PROMPTS, PARAMS)
        # NOTE: the same prompts again: their prefixes now come from the radix cache, draft KV included
        again = greedy_ids(engine, PROMPTS[:2], PARAMS)
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert [o["output_ids"] for o in outs] == plain_tokens
    assert again == plain_tokens[:2]
    assert info["speculative_algorithm"] == algorithm
    # every decode step after the prefill's drafts 3 tokens (fewer only at the end of max_new_tokens)
    assert info["spec_drafted_tokens"] >= 3 * info["spec_verify_steps"] * 0.9 > 0, info
    assert all(o["meta_info"]["spec_verify_ct"] >= 1 for o in outs)
    assert info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0
    assert info["available_tokens"] + info["evictable_tokens"] == 8192


def test_grammar_requests_beside_eagle_drafts_keep_their_constraint_and_tokens(
    demo_model_dir: Path, drafts: dict[str, Path]
) -> None:
    pytest.importorskip("xgrammar")
    regex = r"(yes|no), [0-9]{3}-[0-9]{3}\."
    prompts = PROMPTS[:3] + ["Answer:"]
    params: list[Any] = [dict(GREEDY) for _ in PROMPTS[:3]]
    params.append({"regex": regex, "max_new_tokens": 32, "temperature": 0.0})
    plain = make_engine(demo_model_dir)
    try:
        want = plain.generate(prompts, params)
    finally:
        plain.shutdown()
    engine = spec_engine(demo_model_dir, speculative_algorithm="EAGLE3",
                         speculative_draft_model_path=str(drafts["EAGLE3"]), speculative_num_steps=2)
    try:
        got = engine.generate(prompts, params)
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert [o["output_ids"] for o in got] == [o["output_ids"] for o in want]
    assert re.fullmatch(regex, got[-1]["text"])
    assert info["spec_drafted_tokens"] > 0 and info["request_owned_tokens"] == 0


def test_an_eagle1_checkpoint_naming_the_llama_architecture_loads_as_the_eagle_head(
    demo_model_dir: Path, tmp_path: Path, plain_tokens: list[list[int]]
) -> None:
    """Published EAGLE-1/2 checkpoints often say LlamaForCausalLM in their config; SGLang reads them as the head."""
    path = write_eagle_draft(tmp_path / "eagle1", demo_model_dir, architecture="LlamaForCausalLM")
    engine = spec_engine(demo_model_dir, speculative_algorithm="EAGLE", speculative_draft_model_path=str(path),
                         speculative_num_steps=2)
    try:
        assert greedy_ids(engine, PROMPTS[:2], PARAMS) == plain_tokens[:2]
        assert engine.get_server_info()["spec_drafted_tokens"] > 0
    finally:
        engine.shutdown()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"speculative_algorithm": "EAGLE"}, "--speculative-algorithm EAGLE needs --speculative-draft-model-path"),
        ({"speculative_algorithm": "EAGLE", "speculative_draft_model_path": "EAGLE3"},
         "is a LlamaForCausalLMEagle3 checkpoint; --speculative-algorithm EAGLE reads LlamaForCausalLMEagle or "
         "LlamaForCausalLM"),
        ({"speculative_algorithm": "EAGLE3", "speculative_draft_model_path": "EAGLE3", "speculative_eagle_topk": 4,
          "page_size": 4}, "--speculative-eagle-topk 4: tree drafts need --attention-backend torch_native or triton "
         "and --page-size 1"),
        ({"speculative_algorithm": "EAGLE", "speculative_draft_model_path": "EAGLE", "speculative_eagle_topk": 2,
          "speculative_num_steps": 3, "speculative_num_draft_tokens": 8},
         r"--speculative-num-draft-tokens 8: a tree of 3 steps of top-2 verifies 2 to 7 tokens"),
        ({"speculative_algorithm": "EAGLE3", "speculative_draft_model_path": "TARGET"},
         "is a LlamaForCausalLM checkpoint; --speculative-algorithm EAGLE3 reads LlamaForCausalLMEagle3"),
        ({"speculative_algorithm": "EAGLE", "speculative_draft_model_path": "EAGLE", "speculative_eagle_topk": 0},
         r"--speculative-eagle-topk must be at least 1 \(got 0\)"),
    ],
    ids=["no-draft", "eagle3-under-eagle", "tree-paged", "tree-too-many-nodes", "target-as-draft", "topk-0"],
)
def test_eagle_flags_that_cannot_be_honoured_are_refused_with_one_line(
    demo_model_dir: Path, drafts: dict[str, Path], kwargs: dict[str, object], message: str
) -> None:
    path = kwargs.get("speculative_draft_model_path")
    if path is not None:
        kwargs = {**kwargs, "speculative_draft_model_path": str(demo_model_dir if path == "TARGET" else drafts[str(path)])}
    with pytest.raises(ValueError, match=message):
        make_engine(demo_model_dir, **kwargs).shutdown()


def test_a_head_that_mirrors_the_target_has_most_drafts_accepted_and_a_random_one_almost_none(
    tmp_path: Path,
) -> None:
    """Verification accepts what it should, and the draft's KV, positions and chaining are wired as EAGLE trains
    them: a head computing nearly the target's own layer (``write_mirroring_pair``) is accepted well over half the
    time (the rest is EAGLE's shift: the head never sees token 0), a random head on the same target almost never.

    NOTE: without the radix cache: these prompts share their first token, whose shared draft KV pairs it with the
    first owner's second token (see the NOTE in eagle.py), which costs this one-layer mirror much of its accuracy."""
    target, mirror = write_mirroring_pair(tmp_path)
    plain = make_engine(target)
    try:
        want = greedy_ids(plain, PROMPTS, PARAMS)
    finally:
        plain.shutdown()
    rates = {}
    for name, draft in (("mirror", mirror), ("random", write_eagle_draft(tmp_path / "random", target))):
        engine = spec_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(draft),
                             speculative_num_steps=4, disable_radix_cache=True)
        try:
            assert greedy_ids(engine, PROMPTS, PARAMS) == want
            rates[name] = settled_info(engine)
        finally:
            engine.shutdown()
    assert rates["mirror"]["spec_accept_rate"] >= 0.55 and rates["mirror"]["avg_spec_accept_length"] >= 3.0, rates
    assert rates["random"]["spec_accept_rate"] <= 0.1, rates


@pytest.mark.parametrize("topk,draft_tokens", [(1, 4), (2, 6)], ids=["chain", "tree"])
def test_a_pool_too_small_for_every_draft_retracts_and_keeps_the_tokens(
    tmp_path: Path, topk: int, draft_tokens: int
) -> None:
    """A pool that runs out retracts a request (its draft rows restart after recomputation) and every slot comes
    back, the draft KV's included (it lives at the target's slots).

    NOTE: without ignore_eos admission cannot reserve every request's whole output, so the pool runs out."""
    target, mirror = write_mirroring_pair(tmp_path)
    params = {"temperature": 0.0, "max_new_tokens": 48}
    small = {"max_total_tokens": 144, "max_running_requests": 8}
    plain = make_engine(target, **small)
    try:
        want = greedy_ids(plain, PROMPTS, params)
    finally:
        plain.shutdown()
    engine = spec_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                         speculative_num_steps=3, speculative_eagle_topk=topk,
                         speculative_num_draft_tokens=draft_tokens, **small)
    try:
        assert greedy_ids(engine, PROMPTS, params) == want
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert info["retractions"] > 0 and info["spec_accepted_tokens"] > 0
    assert info["request_owned_tokens"] == 0 and info["available_tokens"] + info["evictable_tokens"] == 144


def test_chunked_prefill_hands_the_hidden_states_over_chunk_by_chunk(tmp_path: Path) -> None:
    """The draft's first extend covers every chunk's positions: the mirror is accepted as well as unchunked."""
    target, mirror = write_mirroring_pair(tmp_path)
    rates = []
    for chunk in (-1, 8):
        engine = spec_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                             speculative_num_steps=3, chunked_prefill_size=chunk, disable_radix_cache=True)
        try:
            rates.append((greedy_ids(engine, PROMPTS, PARAMS), settled_info(engine)["spec_accept_rate"]))
        finally:
            engine.shutdown()
    assert rates[0] == rates[1] and rates[0][1] >= 0.55


def test_an_eagle3_head_asking_for_layers_the_target_lacks_is_refused(demo_model_dir: Path, tmp_path: Path) -> None:
    path = write_eagle3_draft(tmp_path / "deep", demo_model_dir, aux_layer_ids=(0, 1, 9))
    with pytest.raises(ValueError, match=r"EAGLE-3 reads three layers of the target's 4, got \[1, 2, 10\]"):
        spec_engine(demo_model_dir, speculative_algorithm="EAGLE3", speculative_draft_model_path=str(path)).shutdown()


def test_seeded_sampling_gives_the_tokens_of_plain_decoding(tmp_path: Path) -> None:
    """At temperature > 0 a seeded request draws each token with the seed of its output index, drafts or not."""
    target, mirror = write_mirroring_pair(tmp_path)
    params = [{"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 20, "seed": 5 + i, "ignore_eos": True}
              for i in range(len(PROMPTS))]
    plain = make_engine(target)
    try:
        want = [o["output_ids"] for o in plain.generate(PROMPTS, params)]
    finally:
        plain.shutdown()
    engine = spec_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                         speculative_num_steps=3)
    try:
        got = [o["output_ids"] for o in engine.generate(PROMPTS, params)]
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert got == want
    assert info["spec_accepted_tokens"] > 0 and info["request_owned_tokens"] == 0


@pytest.mark.parametrize("algorithm", ["EAGLE", "EAGLE3"])
def test_tree_drafts_leave_the_greedy_tokens_unchanged(
    demo_model_dir: Path, drafts: dict[str, Path], plain_tokens: list[list[int]], algorithm: str
) -> None:
    engine = spec_engine(demo_model_dir, speculative_algorithm=algorithm, speculative_eagle_topk=3,
                         speculative_draft_model_path=str(drafts[algorithm]), speculative_num_steps=3,
                         speculative_num_draft_tokens=7)
    try:
        assert greedy_ids(engine, PROMPTS, PARAMS) == plain_tokens
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert info["spec_drafted_tokens"] >= 6 * info["spec_verify_steps"] * 0.9 > 0, info
    assert info["request_owned_tokens"] == 0 and info["available_tokens"] + info["evictable_tokens"] == 8192


def test_a_tree_of_two_branches_accepts_at_least_as_much_as_the_chain_and_sampling_stays_exact(
    tmp_path: Path,
) -> None:
    """The tree holds the chain's greedy path and its runners-up, so the walk gets at least as far; seeded sampling
    walks the tree with the seeds of plain decoding."""
    target, mirror = write_mirroring_pair(tmp_path)
    sampled = [{"temperature": 0.9, "max_new_tokens": 20, "seed": 9 + i, "ignore_eos": True} for i in range(3)]
    plain = make_engine(target)
    try:
        want = greedy_ids(plain, PROMPTS, PARAMS), [o["output_ids"] for o in plain.generate(PROMPTS[:3], sampled)]
    finally:
        plain.shutdown()
    lengths = {}
    for topk, tokens in ((1, 5), (2, 8)):
        engine = spec_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                             speculative_num_steps=4, speculative_eagle_topk=topk,
                             speculative_num_draft_tokens=tokens, disable_radix_cache=True)
        try:
            assert greedy_ids(engine, PROMPTS, PARAMS) == want[0]
            lengths[topk] = settled_info(engine)["avg_spec_accept_length"]
            assert [o["output_ids"] for o in engine.generate(PROMPTS[:3], sampled)] == want[1]
            assert settled_info(engine)["request_owned_tokens"] == 0
        finally:
            engine.shutdown()
    assert lengths[2] >= lengths[1] >= 3.0, lengths
