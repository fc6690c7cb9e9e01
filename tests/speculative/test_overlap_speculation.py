"""Speculation under the overlap loop: the steps that draft run alone, the gate's plain steps chain, and the tokens are
plain decoding's whatever the mix; the draft's inputs survive the overlapped steps (a mirroring EAGLE head is accepted
as often as without overlap); no KV slot is kept after the runs."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

import sgl
from sgl.core.speculative.gate import PLAIN, SPECULATE, SpeculationGate
from tests.core.engine_utils import PROMPTS, make_engine, plain_greedy_ids, settled_info
from tests.speculative.eagle_drafts import write_eagle3_draft, write_eagle_draft, write_mirroring_pair

PARAMS = {"temperature": 0.0, "max_new_tokens": 24, "ignore_eos": True}
# NOTE: a drafting step, then three plain ones that chain: every switch between the loops is crossed many times
CYCLE = (SPECULATE, PLAIN, PLAIN, PLAIN)


def _cycling(engine: sgl.Engine) -> None:
    gate = engine.runtime.scheduler.gate
    assert isinstance(gate, SpeculationGate)
    modes = itertools.cycle(CYCLE)
    gate.choose = lambda size: next(modes)  # type: ignore[method-assign]


def _run(model: Path, prompts: list[str], **kwargs: Any) -> tuple[list[list[int]], dict[str, Any], list[dict]]:
    engine = make_engine(model, force_overlap_schedule=True, **kwargs)
    try:
        if not kwargs.get("disable_speculative_gate"):
            _cycling(engine)
        outs = engine.generate(prompts, PARAMS)
        return [o["output_ids"] for o in outs], settled_info(engine), [o["meta_info"] for o in outs]
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def plain_tokens(demo_model_dir: Path) -> list[list[int]]:
    return plain_greedy_ids(demo_model_dir, PROMPTS, PARAMS)


@pytest.mark.parametrize("algorithm", ["NGRAM", "EAGLE", "EAGLE3"])
def test_drafting_and_overlapped_plain_steps_give_the_plain_tokens(
    demo_model_dir: Path, plain_tokens: list[list[int]], tmp_path: Path, algorithm: str
) -> None:
    kwargs: dict[str, Any] = {"speculative_algorithm": algorithm, "speculative_num_draft_tokens": 4}
    if algorithm == "EAGLE":
        kwargs.update(speculative_draft_model_path=str(write_eagle_draft(tmp_path / "d", demo_model_dir)),
                      speculative_num_steps=3, page_size=4)
    elif algorithm == "EAGLE3":
        kwargs.update(speculative_draft_model_path=str(write_eagle3_draft(tmp_path / "d", demo_model_dir)),
                      speculative_num_steps=3)
    tokens, info, metas = _run(demo_model_dir, PROMPTS, **kwargs)
    assert tokens == plain_tokens
    assert info["overlapped_steps"] > 0 and info["spec_gate_plain_steps"] > 0, info
    if algorithm != "NGRAM":  # NOTE: n-grams of the demo model's output may not match at a drafting step
        assert info["spec_verify_steps"] > 0, info
    # every decode forward counts once, plain or verifying: none emits fewer than one token
    assert all(1 <= m["spec_verify_ct"] <= m["completion_tokens"] for m in metas), metas
    assert info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0


def test_with_the_gate_off_every_decode_step_drafts_and_none_chains(
    demo_model_dir: Path, plain_tokens: list[list[int]], tmp_path: Path
) -> None:
    draft = write_eagle3_draft(tmp_path / "d", demo_model_dir)
    tokens, info, _ = _run(demo_model_dir, PROMPTS, speculative_algorithm="EAGLE3", disable_speculative_gate=True,
                           speculative_draft_model_path=str(draft), speculative_num_steps=3)
    assert tokens == plain_tokens
    assert info["overlapped_steps"] == 0 and info["spec_verify_steps"] > 0, info


def test_a_mirroring_head_is_accepted_after_overlapped_plain_steps(tmp_path: Path) -> None:
    """The hidden states that overlapped plain steps leave for the draft are those of their positions: a head that
    mirrors the target is accepted well over half the time, as without overlap (test_eagle_engine.py)."""
    target, mirror = write_mirroring_pair(tmp_path)
    want = plain_greedy_ids(target, PROMPTS, PARAMS)
    tokens, info, _ = _run(target, PROMPTS, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                           speculative_num_steps=4, disable_radix_cache=True)
    assert tokens == want
    assert info["overlapped_steps"] > 0 and info["spec_accept_rate"] >= 0.55, info
