"""Workload generators: exact or bounded lengths, ids inside the vocabulary, prefixes really shared."""

from __future__ import annotations

import pytest

from sgl.bench.workloads import WorkloadSpec, random_workload, shared_prefix_workload


def test_range_ratio_one_gives_fixed_lengths() -> None:
    reqs = random_workload(20, 50, 7, vocab=300, range_ratio=1.0, seed=0)
    assert len(reqs) == 20
    assert {len(r.input_ids) for r in reqs} == {50}
    assert {r.output_len for r in reqs} == {7}
    assert all(0 <= t < 300 for r in reqs for t in r.input_ids)


def test_range_ratio_below_one_draws_lengths_in_the_range() -> None:
    reqs = random_workload(200, 100, 40, vocab=1000, range_ratio=0.25, seed=5)
    ins = [len(r.input_ids) for r in reqs]
    outs = [r.output_len for r in reqs]
    assert min(ins) >= 25 and max(ins) <= 100 and len(set(ins)) > 20
    assert min(outs) >= 10 and max(outs) <= 40 and len(set(outs)) > 10


def test_same_seed_same_workload_other_seed_other_ids() -> None:
    a = random_workload(5, 30, 4, vocab=500, range_ratio=0.5, seed=11)
    assert a == random_workload(5, 30, 4, vocab=500, range_ratio=0.5, seed=11)
    assert a != random_workload(5, 30, 4, vocab=500, range_ratio=0.5, seed=12)


def test_shared_prefix_groups_share_exactly_their_system_prompt() -> None:
    reqs = shared_prefix_workload(3, 4, system_prompt_len=64, question_len=8, output_len=5, vocab=5000, seed=2)
    assert len(reqs) == 12
    assert all(len(r.input_ids) == 72 and r.output_len == 5 for r in reqs)
    for g in range(3):
        group = [r for r in reqs if r.group == g]
        assert len(group) == 4
        assert len({tuple(r.input_ids[:64]) for r in group}) == 1  # one system prompt per group
        assert len({tuple(r.input_ids[64:]) for r in group}) == 4  # distinct questions
    assert len({tuple(r.input_ids[:64]) for r in reqs}) == 3  # groups do not share
    assert [r.group for r in reqs] == [0] * 4 + [1] * 4 + [2] * 4


def test_spec_builds_the_named_workload_and_rejects_bad_input() -> None:
    spec = WorkloadSpec(workload="shared-prefix", num_groups=2, questions_per_group=3, system_prompt_len=10,
                        question_len=2, output_len=3)
    assert len(spec.build(100)) == 6
    assert spec.describe()["num_groups"] == 2 and "num_prompts" not in spec.describe()
    with pytest.raises(ValueError, match="unknown workload"):
        WorkloadSpec(workload="zipf").build(100)
    with pytest.raises(ValueError, match="range_ratio"):
        random_workload(2, 10, 2, vocab=10, range_ratio=1.5)
