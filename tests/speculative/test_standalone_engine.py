"""STANDALONE speculation on the demo model: a draft model with the target's tokenizer. Exactness must not depend on
acceptance (a random draft), and verification must accept what it should (the target drafting for itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgl.core.demo_model import write_demo_model
from tests.core.engine_utils import PROMPTS, greedy_ids, make_engine, plain_greedy_ids, settled_info

PARAMS = {"temperature": 0.0, "max_new_tokens": 24, "ignore_eos": True}


@pytest.fixture(scope="module")
def plain_tokens(demo_model_dir: Path) -> list[list[int]]:
    return plain_greedy_ids(demo_model_dir, PROMPTS, PARAMS)


@pytest.fixture(scope="module")
def small_draft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller model (1 layer, other random weights) with the demo model's tokenizer."""
    return write_demo_model(tmp_path_factory.mktemp("draft") / "draft", seed=1, num_layers=1, hidden_size=64,
                            intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=32)


def test_a_random_small_draft_leaves_the_greedy_tokens_unchanged(
    demo_model_dir: Path, small_draft_dir: Path, plain_tokens: list[list[int]]
) -> None:
    engine = make_engine(demo_model_dir, speculative_algorithm="STANDALONE",
                         speculative_draft_model_path=str(small_draft_dir), speculative_num_steps=3)
    try:
        assert greedy_ids(engine, PROMPTS, PARAMS) == plain_tokens
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert info["speculative_algorithm"] == "STANDALONE" and info["spec_drafted_tokens"] > 0
    assert info["request_owned_tokens"] == 0


@pytest.mark.parametrize("page_size", [1, 4])
def test_the_target_drafting_for_itself_is_accepted_at_least_95_percent(
    demo_model_dir: Path, plain_tokens: list[list[int]], page_size: int
) -> None:
    # NOTE: the gate off: this measures what verification accepts, so every decode step must draft
    engine = make_engine(demo_model_dir, speculative_algorithm="STANDALONE", page_size=page_size,
                         speculative_draft_model_path=str(demo_model_dir), speculative_num_steps=4,
                         disable_speculative_gate=True)
    try:
        outs = engine.generate(PROMPTS, PARAMS)
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert [o["output_ids"] for o in outs] == plain_tokens
    # 23 tokens after the prefill's, 5 per verify forward: 5 forwards each
    assert all(o["meta_info"]["spec_verify_ct"] <= 6 for o in outs), [o["meta_info"] for o in outs]
    assert info["spec_accept_rate"] >= 0.95, info
    assert info["avg_spec_accept_length"] > 4.0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"speculative_algorithm": "STANDALONE"}, "needs --speculative-draft-model-path"),
        ({"speculative_algorithm": "STANDALONE", "speculative_draft_model_path": "DRAFT", "speculative_num_steps": 3,
          "speculative_num_draft_tokens": 8}, "--speculative-num-draft-tokens 8: a chain of 3 draft steps verifies 4"),
        ({"speculative_algorithm": "STANDALONE", "speculative_draft_model_path": "DRAFT",
          "speculative_eagle_topk": 4}, "--speculative-eagle-topk 4: tree drafts are not supported yet"),
        ({"speculative_num_steps": 3}, "--speculative-num-steps needs --speculative-algorithm"),
        ({"speculative_algorithm": "NGRAM", "speculative_num_steps": 3}, "--speculative-num-steps: NGRAM has no draft"),
    ],
    ids=["no-draft", "draft-tokens-vs-steps", "topk", "no-algorithm", "ngram-steps"],
)
def test_speculative_flags_that_cannot_be_honoured_are_refused_with_one_line(
    demo_model_dir: Path, small_draft_dir: Path, kwargs: dict[str, object], message: str
) -> None:
    if kwargs.get("speculative_draft_model_path") == "DRAFT":
        kwargs = {**kwargs, "speculative_draft_model_path": str(small_draft_dir)}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make_engine(demo_model_dir, **kwargs).shutdown()


def test_a_pool_too_small_for_every_draft_retracts_and_keeps_the_tokens(demo_model_dir: Path) -> None:
    """Drafts take KV only when the pool has it; retraction still makes room for one token per request.

    NOTE: without ignore_eos admission cannot reserve every request's whole output, so the pool runs out."""
    params = {"temperature": 0.0, "max_new_tokens": 48}
    small = {"max_total_tokens": 160, "max_running_requests": 8}
    plain = make_engine(demo_model_dir, **small)
    try:
        want = greedy_ids(plain, PROMPTS, params)
    finally:
        plain.shutdown()
    engine = make_engine(demo_model_dir, speculative_algorithm="STANDALONE", **small,
                         speculative_draft_model_path=str(demo_model_dir), speculative_num_steps=4)
    try:
        assert greedy_ids(engine, PROMPTS, params) == want
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert info["retractions"] > 0 and info["spec_accepted_tokens"] > 0
    assert info["request_owned_tokens"] == 0 and info["available_tokens"] + info["evictable_tokens"] == 160
