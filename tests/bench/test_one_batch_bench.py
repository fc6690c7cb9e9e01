"""One-batch bench through the real Scheduler on the demo model, at batch 1 and 2 with tiny lengths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sgl.bench.one_batch import run_one_batch
from sgl.cli import app
from sgl.core.config import ServerArgs


def test_batches_one_and_two_run_one_prefill_then_decode_steps() -> None:
    results = run_one_batch(ServerArgs(max_total_tokens=2048), [1, 2], input_len=10, output_len=4)
    assert [r.batch_size for r in results] == [1, 2]
    for r in results:
        assert r.decode_steps == 3  # the prefill samples the first token; three decode steps give the rest
        assert r.prefill_throughput == pytest.approx(r.batch_size * 10 / r.prefill_latency_s)
        assert r.decode_median_ms > 0 and r.decode_throughput > 0
        assert r.total_latency_s >= r.prefill_latency_s + r.decode_steps * r.decode_median_ms / 1e3 * 0.5


def test_a_batch_the_kv_pool_cannot_prefill_at_once_is_reported() -> None:
    with pytest.raises(RuntimeError, match="did not fit in one step"):
        run_one_batch(ServerArgs(max_total_tokens=96), [3], input_len=40, output_len=2, warmup=False)


def test_cli_takes_space_separated_batch_sizes_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "one.json"
    res = CliRunner().invoke(app, [
        "bench", "one-batch", "--batch-size", "1", "2", "--input-len", "8", "--output-len", "2",
        "--max-total-tokens", "2048", "--result-json", str(out),
    ])
    assert res.exit_code == 0, res.output
    assert "decode tok/s" in res.output
    data = json.loads(out.read_text())
    assert [r["batch_size"] for r in data["results"]] == [1, 2]
    assert all(r["decode_steps"] == 1 for r in data["results"])
