"""NGRAM speculation on the demo model: the same greedy tokens as without it, drafts accepted on repetitive text,
KV slots of rejected drafts given back (the pool invariant is checked after every step)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.engine_utils import GREEDY, PROMPTS, greedy_ids, make_engine, settled_info

REPETITIVE = [
    "a b c d e f g a b c d e f g a b c d e f g a b c",
    "1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2,",
    "the cat sat on the mat. the cat sat on the mat. the cat sat on the",
]


@pytest.fixture(scope="module")
def plain_tokens(demo_model_dir: Path) -> list[list[int]]:
    engine = make_engine(demo_model_dir)
    try:
        return greedy_ids(engine, PROMPTS + REPETITIVE)
    finally:
        engine.shutdown()


def test_ngram_gives_the_greedy_tokens_of_plain_decoding_and_accepts_drafts(
    demo_model_dir: Path, plain_tokens: list[list[int]]
) -> None:
    engine = make_engine(demo_model_dir, speculative_algorithm="NGRAM", speculative_num_draft_tokens=5)
    try:
        assert greedy_ids(engine, PROMPTS + REPETITIVE) == plain_tokens
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert info["speculative_algorithm"] == "NGRAM"
    assert info["spec_verify_steps"] > 0 and info["spec_drafted_tokens"] > 0
    assert info["spec_accepted_tokens"] > 0, info
    assert info["avg_spec_accept_length"] > 1.0
    assert info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0


def test_grammar_requests_in_a_speculative_batch_keep_their_constraint_and_tokens(demo_model_dir: Path) -> None:
    """A constrained request decodes one token per step (its mask advances token by token) beside requests that
    verify drafts; both give the tokens they give without speculation."""
    import re

    pytest.importorskip("xgrammar")
    regex = r"(yes|no), [0-9]{3}-[0-9]{3}\."
    prompts = REPETITIVE + ["Answer:"]
    params = [dict(GREEDY) for _ in REPETITIVE] + [{"regex": regex, "max_new_tokens": 32, "temperature": 0.0}]
    plain = make_engine(demo_model_dir)
    try:
        want = plain.generate(prompts, params)
    finally:
        plain.shutdown()
    engine = make_engine(demo_model_dir, speculative_algorithm="NGRAM", speculative_num_draft_tokens=4)
    try:
        got = engine.generate(prompts, params)
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert [o["output_ids"] for o in got] == [o["output_ids"] for o in want]
    assert re.fullmatch(regex, got[-1]["text"])
    assert info["spec_drafted_tokens"] > 0


def test_meta_info_reports_the_verify_steps_each_request_took(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir, speculative_algorithm="NGRAM")
    try:
        outs = engine.generate(REPETITIVE, dict(GREEDY))
    finally:
        engine.shutdown()
    for o in outs:
        meta = o["meta_info"]
        # NOTE: the first token comes from prefill; every later step is one verify forward (or a plain decode)
        assert 1 <= meta["spec_verify_ct"] <= meta["completion_tokens"] - 1


def test_a_request_drafts_from_what_an_earlier_request_generated(demo_model_dir: Path) -> None:
    """The shared n-grams of recent requests: the same prompt again drafts the first answer, and is accepted."""
    accepted = {}
    for capacity in (0, 100_000):
        # NOTE: the gate off: on a loaded CPU its timing may pick plain steps, which draft nothing to count
        engine = make_engine(demo_model_dir, speculative_algorithm="NGRAM", speculative_ngram_capacity=capacity,
                             disable_radix_cache=True, disable_speculative_gate=True)
        try:
            first = engine.generate(PROMPTS[1], dict(GREEDY))
            before = engine.get_server_info()["spec_accepted_tokens"]
            again = engine.generate(PROMPTS[1], dict(GREEDY))
            accepted[capacity] = engine.get_server_info()["spec_accepted_tokens"] - before
        finally:
            engine.shutdown()
        assert again["output_ids"] == first["output_ids"]
    assert accepted[100_000] >= 20 > accepted[0], accepted
