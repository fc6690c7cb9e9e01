"""Offline bench on the demo model: exact token counts, cache accounting, JSON through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sgl.bench.offline import compare_radix, run_offline
from sgl.bench.workloads import WorkloadSpec
from sgl.cli import app
from sgl.core.config import ServerArgs

ARGS = ServerArgs(max_total_tokens=4096)


def test_cli_writes_json_with_consistent_counts(tmp_path: Path) -> None:
    out = tmp_path / "offline.json"
    res = CliRunner().invoke(app, [
        "bench", "offline", "--num-prompts", "3", "--input-len", "12", "--output-len", "3", "--range-ratio", "0.5",
        "--max-total-tokens", "4096", "--disable-tqdm", "--result-json", str(out),
    ])
    assert res.exit_code == 0, res.output
    assert "Output token throughput" in res.output
    data = json.loads(out.read_text())
    r = data["result"]
    assert data["workload"]["num_prompts"] == 3 and data["server_args"]["max_total_tokens"] == 4096
    assert r["num_requests"] == 3
    spec = WorkloadSpec(num_prompts=3, input_len=12, output_len=3, range_ratio=0.5)
    reqs = spec.build(2048)
    assert r["input_tokens"] == sum(len(q.input_ids) for q in reqs)
    assert r["output_tokens"] == sum(q.output_len for q in reqs)  # ignore_eos makes lengths exact
    assert r["total_throughput"] == pytest.approx((r["input_tokens"] + r["output_tokens"]) / r["duration_s"])
    assert r["request_throughput"] == pytest.approx(3 / r["duration_s"])
    for key in ("input_throughput", "output_throughput", "cached_fraction", "cached_tokens"):
        assert key in r


def test_shared_prefix_hits_the_radix_cache_and_not_without_it() -> None:
    """A prefill budget of one whole prompt (no chunking) puts each group's first prompt in a step of its own.

    NOTE: the scheduler does not share prefixes inside one prefill batch, so the later questions of a group hit
    the cache only when they are scheduled after its first prompt: here 2 of 3 per group, exactly.
    """
    spec = WorkloadSpec(workload="shared-prefix", num_groups=2, questions_per_group=3, system_prompt_len=48,
                        question_len=4, output_len=2)
    args = ARGS.replace(chunked_prefill_size=-1, max_prefill_tokens=52)
    cmp = compare_radix(args, spec, progress=False)
    on, off = cmp.radix_on, cmp.radix_off
    assert on.num_requests == off.num_requests == 6
    assert on.input_tokens == off.input_tokens == 6 * 52
    assert on.output_tokens == off.output_tokens == 12
    assert off.cached_tokens == 0
    assert on.cached_tokens == 4 * 48  # each group's second and third questions reuse its system prompt
    assert on.cached_fraction == 4 * 48 / (6 * 52)
    assert cmp.speedup == off.duration_s / on.duration_s
    assert "speed-up" in cmp.format()


def test_a_workload_that_cannot_fit_the_context_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="context length"):
        run_offline(ARGS.replace(context_length=32), WorkloadSpec(num_prompts=1, input_len=40, output_len=2),
                    progress=False)


def test_offline_bench_reports_the_acceptance_length_with_speculation_only() -> None:
    """completion tokens / verify forwards (SGLang's meta_info spec_verify_ct), as SGLang's offline bench prints it."""
    spec = WorkloadSpec(num_prompts=2, input_len=16, output_len=12)
    plain = run_offline(ARGS, spec, progress=False)
    assert plain.accept_length is None and "Accept length" not in plain.format()
    ngram = run_offline(ARGS.replace(speculative_algorithm="NGRAM", speculative_num_draft_tokens=4), spec,
                        progress=False)
    assert ngram.accept_length is not None and 1.0 <= ngram.accept_length <= 4.0
    assert "Accept length:" in ngram.format() and ngram.as_dict()["accept_length"] == ngram.accept_length
