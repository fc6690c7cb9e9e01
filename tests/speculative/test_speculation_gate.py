"""The speculation gate: per batch size, the mode that delivered more tokens per second runs, the slower one is
probed now and then, and whichever runs, the greedy tokens are those of plain decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgl.core.speculative.gate import PLAIN, SPECULATE, SpeculationGate
from tests.core.engine_utils import PROMPTS, greedy_ids, make_engine, settled_info
from tests.speculative.test_ngram_engine import REPETITIVE, plain_tokens  # noqa: F401 (a fixture)


def _feed(gate: SpeculationGate, size: int, spec_tps: float, plain_tps: float, steps: int) -> list[str]:
    chosen = []
    for _ in range(steps):
        mode = gate.choose(size)
        chosen.append(mode)
        gate.record(size, mode, tokens=100, seconds=100 / (spec_tps if mode == SPECULATE else plain_tps))
    return chosen


def test_the_faster_mode_wins_per_batch_size_after_both_were_measured() -> None:
    gate = SpeculationGate(warmup=2, probe_every=10)
    small = _feed(gate, 1, spec_tps=300.0, plain_tps=100.0, steps=40)
    large = _feed(gate, 64, spec_tps=2000.0, plain_tps=5000.0, steps=40)
    assert small[:4] == [SPECULATE, SPECULATE, PLAIN, PLAIN]  # warm-up: each mode measured first
    assert small[4:].count(SPECULATE) > 30 and large[4:].count(PLAIN) > 30
    # the slower mode is probed about once per probe_every steps, so a change is noticed
    assert 2 <= small[4:].count(PLAIN) <= 4 and 2 <= large[4:].count(SPECULATE) <= 4
    assert SpeculationGate.bucket_of(1) == 1 and SpeculationGate.bucket_of(33) == SpeculationGate.bucket_of(64) == 64


def test_probes_back_off_while_they_confirm_the_order_and_start_over_when_it_changes() -> None:
    gate = SpeculationGate(warmup=1, probe_every=8, max_probe_every=64)
    steady = _feed(gate, 64, spec_tps=2000.0, plain_tps=5000.0, steps=600)
    probes = [i for i, mode in enumerate(steady) if mode == SPECULATE][1:]  # after the warm-up sample
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps[:4] == [17, 33, 65, 65], gaps  # 16, 32, then the cap of 64 faster steps between probes
    assert len(probes) <= 12  # 2% of the steps, where a fixed interval of 8 would have probed 66 times
    # acceptance jumps: the probes (at most 64 steps apart, each weighing half of the stale estimate) find
    # speculation faster within three, and from then on it runs, the new order probed afresh (9, then 17 steps on)
    after = _feed(gate, 64, spec_tps=9000.0, plain_tps=5000.0, steps=300)
    assert after[200:].count(SPECULATE) >= 95, after


def test_a_step_split_unevenly_between_two_samples_does_not_inflate_the_rate() -> None:
    """The overlap loop times a chain's first plain step from its launch to its resolve, which may take in part of the
    next step's time; the next sample is then short. Averaging seconds and tokens apart keeps the true rate."""
    gate = SpeculationGate(warmup=2, probe_every=100)
    for _ in range(20):
        gate.record(1, PLAIN, tokens=1, seconds=0.0029)  # 1 token in 2.9 ms, then 1 in 0.1 ms: 667 tok/s
        gate.record(1, PLAIN, tokens=1, seconds=0.0001)
        gate.record(1, SPECULATE, tokens=2, seconds=0.002)  # 1,000 tok/s
    assert gate.choose(1) == SPECULATE
    rates = gate.info()["spec_gate_tokens_per_s"]["1"]  # type: ignore[index]
    assert 600 < rates[PLAIN] < 800 and rates[SPECULATE] == 1000.0  # a rate per sample would say ~2,000


def test_a_change_in_what_speculation_delivers_is_noticed_through_the_probes() -> None:
    gate = SpeculationGate(warmup=2, probe_every=4, weight=0.5)
    _feed(gate, 8, spec_tps=300.0, plain_tps=100.0, steps=20)
    later = _feed(gate, 8, spec_tps=50.0, plain_tps=100.0, steps=40)  # acceptance collapsed
    assert later[-10:].count(PLAIN) >= 8


@pytest.mark.parametrize("preferred", [SPECULATE, PLAIN])
def test_whichever_mode_the_gate_picks_the_tokens_are_plain_decodings(
    demo_model_dir: Path, plain_tokens: list[list[int]], preferred: str  # noqa: F811
) -> None:
    engine = make_engine(demo_model_dir, speculative_algorithm="NGRAM", speculative_num_draft_tokens=5)
    try:
        gate = engine.runtime.scheduler.gate
        assert isinstance(gate, SpeculationGate)
        gate.choose = lambda size: preferred  # type: ignore[method-assign]
        assert greedy_ids(engine, PROMPTS + REPETITIVE) == plain_tokens
        info = settled_info(engine)
    finally:
        engine.shutdown()
    assert info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0
    if preferred == PLAIN:
        assert info["spec_verify_steps"] == 0 and info["spec_gate_plain_steps"] > 0
    else:
        assert info["spec_verify_steps"] > 0 and info["spec_gate_tokens_per_s"]


def test_the_gate_is_on_by_default_and_off_with_its_flag(demo_model_dir: Path) -> None:
    with make_engine(demo_model_dir, speculative_algorithm="NGRAM") as on:
        assert isinstance(on.runtime.scheduler.gate, SpeculationGate)
    with make_engine(demo_model_dir, speculative_algorithm="NGRAM", disable_speculative_gate=True) as off:
        assert off.runtime.scheduler.gate is None
    with pytest.raises(ValueError, match="--disable-speculative-gate needs --speculative-algorithm"):
        make_engine(demo_model_dir, disable_speculative_gate=True)
