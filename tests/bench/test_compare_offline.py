"""``sgl bench serving --compare-offline``: one run, the offline Engine then a launched server, and their ratio."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sgl.bench.cpu_time import CpuMeter, children, cpu_seconds
from sgl.cli import app


def test_compare_offline_runs_both_and_reports_the_ratio_and_cpu_split(tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    res = CliRunner().invoke(app, [
        "bench", "serving", "--compare-offline", "--num-prompts", "4", "--input-len", "8", "--output-len", "4",
        "--range-ratio", "1", "--max-total-tokens", "4096", "--disable-tqdm", "--result-json", str(out),
    ])
    assert res.exit_code == 0, res.output
    assert "Server / offline output throughput" in res.output
    data = json.loads(out.read_text())
    off, srv = data["offline"], data["serving"]
    assert off["output_tokens"] == srv["output_tokens"] == 16 and srv["failed"] == 0
    assert off["input_tokens"] == srv["input_tokens"] == 32
    assert data["ratio"] == pytest.approx(srv["output_throughput"] / off["output_throughput"])
    # the same work on both sides: one first token per request from its prefill, the rest from decode rows
    assert data["serving_scheduler"]["decode_rows"] == off["scheduler"]["decode_rows"] == 12
    assert "Scheduler decode rows:" in res.output
    cpu = data["serving_cpu_us_per_token"]
    assert set(cpu) == {"bench client", "API process", "scheduler"}
    if sys.platform == "linux":
        assert all(v is not None and v > 0 for v in cpu.values())  # each process did work for those tokens


def test_compare_offline_refuses_a_foreign_server_or_a_finite_rate() -> None:
    res = CliRunner().invoke(app, ["bench", "serving", "--compare-offline", "--request-rate", "4"])
    assert res.exit_code == 2 and "--compare-offline" in res.output


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_cpu_meter_counts_a_busy_child_and_not_an_idle_one() -> None:
    busy = subprocess.Popen([sys.executable, "-c", ("import time\nt=time.process_time()\n"
                                                    "while time.process_time() - t < 3: pass\ntime.sleep(30)")])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)  # NOTE: past the interpreters' start-up, which is not idle
        meter = CpuMeter({"busy": [busy.pid], "idle": [idle.pid]})
        time.sleep(1.0)
        split = meter.stop(output_tokens=1000)
        assert split.seconds["busy"] is not None and split.seconds["busy"] >= 0.3
        assert split.seconds["idle"] is not None and split.seconds["idle"] < 0.1
        assert split.us_per_token()["busy"] == pytest.approx(split.seconds["busy"] * 1e3)
        assert cpu_seconds(2**22 + 12345) is None  # no such process
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    assert children(busy.pid) == []
