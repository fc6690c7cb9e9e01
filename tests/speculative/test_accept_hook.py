"""An algorithm's own acceptance rule (``SpeculativeAlgorithm.accept``), added in-process as a third party would: the
verify forward runs as always, the rule decides how many drafts each step emits (then the target's token after them),
and the scheduler frees the rejected drafts' KV. Without an override the exact rule keeps plain decoding's tokens."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sgl.core.hooks import hookimpl
from sgl.core.plugins import add_in_process_plugin, remove_in_process_plugin
from sgl.core.speculative.base import SpeculativeAlgorithm
from sgl.core.speculative.verify import VerifyResult, draft_budget, verify_drafts
from tests.core.engine_utils import make_engine, settled_info

DRAFTS, TOKEN = 3, 77
# NOTE: 1 token from the prefill, then 5 verify forwards of 3 tokens (the last with a budget of 2 drafts)
PARAMS = {"temperature": 0.0, "max_new_tokens": 16, "ignore_eos": True}
PROMPTS = [[20 + (5 * i + 3 * j) % 500 for j in range(6 + i)] for i in range(3)]


class ConstantDrafts(SpeculativeAlgorithm):
    """Drafts the same token everywhere; verified with the algorithm's own ``accept``."""

    def __init__(self, context_len: int) -> None:
        self.context_len = context_len
        self.verifies = 0

    @classmethod
    def create(cls, server_args: Any, runner: Any) -> ConstantDrafts:
        return cls(runner.context_len)

    def decode_step(self, batch: Any, state: Any, executor: Any) -> VerifyResult | None:
        drafts = [[TOKEN] * draft_budget(r, DRAFTS, self.context_len) for r in batch.reqs]
        result = verify_drafts(batch, state, executor, drafts, self.accept)
        self.verifies += result is not None
        return result

    def info(self) -> dict[str, Any]:
        return {"constant_drafts_verifies": self.verifies}


class AcceptTwo(ConstantDrafts):
    """Accepts two drafts per step whatever the target says (a measuring tool's rule)."""

    def accept(self, req: Any, drafts: Sequence[int], target: Sequence[int]) -> int:
        return min(2, len(drafts))


@pytest.fixture(scope="module")
def plugin() -> Iterator[None]:
    hooks = SimpleNamespace(sgl_speculative_algorithms=hookimpl(
        lambda: {"CONSTANT_DRAFTS": ConstantDrafts, "ACCEPT_TWO": AcceptTwo}))
    add_in_process_plugin("accept-hook-test", hooks)
    yield
    remove_in_process_plugin("accept-hook-test")


def run(model: Path, **kw: Any) -> tuple[list[list[int]], dict[str, Any]]:
    engine = make_engine(model, **kw)
    try:
        outs = [o["output_ids"] for o in engine.generate(input_ids=PROMPTS, sampling_params=PARAMS)]
        return outs, settled_info(engine)
    finally:
        engine.shutdown()


def test_the_default_rule_keeps_plain_tokens_and_an_override_decides_acceptance(
    demo_model_dir: Path, plugin: None
) -> None:
    plain, _ = run(demo_model_dir)
    exact, info = run(demo_model_dir, speculative_algorithm="CONSTANT_DRAFTS", disable_speculative_gate=True)
    assert exact == plain
    two, info = run(demo_model_dir, speculative_algorithm="ACCEPT_TWO", disable_speculative_gate=True)
    assert info["constant_drafts_verifies"] == 5
    for out, ref in zip(two, plain, strict=True):
        assert len(out) == PARAMS["max_new_tokens"] and out[0] == ref[0]
        assert [out[1 + 3 * s : 3 + 3 * s] for s in range(5)] == [[TOKEN, TOKEN]] * 5  # each step: 2 drafts, 1 own
    assert info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0  # the rejected drafts' KV came back
