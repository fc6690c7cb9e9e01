"""A forward that raises fails only its batch: the KV slots it was writing are freed and never cached (the next
greedy outputs equal those before the fault, page size 1 and 4, radix cache on), the ledger stays whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgl.core.faults import FaultInjector, InjectedFault
from tests.core.engine_utils import PROMPTS, make_engine, settled_info

PARAMS = {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True}


@pytest.mark.parametrize("page_size", [1, 4])
def test_a_failed_step_frees_its_kv_uncached_and_later_outputs_are_unchanged(
    demo_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_size: int,
) -> None:
    arm = tmp_path / "arm"
    monkeypatch.setenv("SGL_FAULT_INJECT", "raise@forward")
    monkeypatch.setenv("SGL_FAULT_INJECT_ARM", str(arm))
    engine = make_engine(demo_model_dir, page_size=page_size)
    try:
        reference = [o["output_ids"] for o in engine.generate(PROMPTS, PARAMS)]
        assert engine.flush_cache()  # NOTE: so the failing prefill computes (and must not cache) every prompt token
        arm.touch()
        failed = engine.generate(PROMPTS[3:], PARAMS)
        assert not arm.exists()
        for out in failed:
            reason = out["meta_info"]["finish_reason"]
            assert reason["type"] == "abort" and "InjectedFault: injected fault in forward" in reason["message"]
        info = settled_info(engine)
        assert info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0
        assert [o["output_ids"] for o in engine.generate(PROMPTS, PARAMS)] == reference
    finally:
        engine.shutdown()


def test_the_fault_spec_is_parsed_or_refused_with_its_grammar(tmp_path: Path) -> None:
    assert FaultInjector.parse("sleep=0.5@forward") == FaultInjector("sleep", "forward", 0.5)
    for bad in ("raise", "raise@backward", "sleep=x@forward", "explode@forward"):
        with pytest.raises(ValueError, match="SGL_FAULT_INJECT"):
            FaultInjector.parse(bad)
    once = FaultInjector.parse("raise@forward", str(tmp_path / "arm"))
    once.at("forward")  # not armed: nothing happens
    (tmp_path / "arm").touch()
    with pytest.raises(InjectedFault):
        once.at("forward")
    once.at("forward")  # fired once; the arm file is gone
