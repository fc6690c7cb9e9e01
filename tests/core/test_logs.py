"""The logs a user reads: the load summary (Engine and server) and the periodic prefill/decode lines."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sgl.core.load_report import GiB, describe_graphs, gib
from sgl.core.scheduler import stats_log
from sgl.core.scheduler.state import StepCounters
from sgl.core.scheduler.stats_log import StatsLog
from tests.core.engine_utils import make_engine, settled_info

SUMMARY_WEIGHTS = re.compile(r"loaded (\w+) on (\w+) \((\S+)\) in [\d.]+ s: dtype (\w+), weights ([\d.e-]+) GiB")
SUMMARY_KV = re.compile(
    r"KV pool (\d+) tokens \(([\d.e-]+) GiB, (\w+)\), max running requests (\d+), attention (\w+), graphs (.+), "
    r"overlap schedule (on|off)"
)
DECODE = re.compile(
    r"Decode batch\. #running-req: (\d+), #token: (\d+), token usage: ([\d.]+), "
    r"gen throughput \(token/s\): ([\d.]+), #queue-req: (\d+)"
)
PREFILL = re.compile(
    r"Prefill batch\. #new-seq: (\d+), #new-token: (\d+), #cached-token: (\d+), token usage: ([\d.]+), #running-req: (\d+), "
    r"#queue-req: (\d+)"
)


def _messages(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]


# ---- the load summary --------------------------------------------------------------------------------------------
def test_engine_load_summary_reports_the_built_model_and_pool(
    demo_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sgl")
    with make_engine(demo_model_dir, max_total_tokens=None, max_running_requests=48) as engine:
        info = engine.get_server_info()
        runner = engine.runtime.scheduler.runner
    text = "\n".join(r.getMessage() for r in _messages(caplog, "sgl.core.load_report"))
    w, kv = SUMMARY_WEIGHTS.search(text), SUMMARY_KV.search(text)
    assert w is not None and kv is not None, text
    assert (w[1], w[2], w[3], w[4]) == ("LlamaForCausalLM", "cpu", "cpu", "float32")
    weights = float(w[5]) * GiB
    on_disk = os.path.getsize(demo_model_dir / "model.safetensors")  # float32 on disk: the same bytes, plus a header
    assert 0 < weights <= on_disk and weights == pytest.approx(on_disk, rel=0.02)
    tokens = int(kv[1])
    assert tokens == info["max_total_tokens"] and tokens != 8192  # sized by the memory plan, not a flag
    cfg = runner.model_config
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    assert float(kv[2]) * GiB == pytest.approx(tokens * per_token, rel=0.01)
    assert (kv[3], int(kv[4]), kv[5], kv[6], kv[7]) == ("float32", 48, "torch_native", "off", "off")


def test_graph_sizes_read_compactly() -> None:
    assert describe_graphs(None) == "off"
    assert describe_graphs([1, 2, 4]) == "batch sizes 1, 2, 4"
    sizes = [1, 2, 4, 8, *range(16, 257, 8)]
    assert describe_graphs(sizes) == f"batch sizes 1, 2, 4, 8, ..., 256 ({len(sizes)} sizes)"
    assert gib(int(14.96 * GiB)) == "14.96" and float(gib(5_000_000)) > 0


def test_weights_progress_bar_follows_the_log_level(
    demo_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sgl.core.model.weights import iter_safetensors

    files = [str(demo_model_dir / "model.safetensors")]
    before = logging.getLogger("sgl").level
    logging.getLogger("sgl").setLevel(logging.WARNING)
    try:
        names = [n for n, _ in iter_safetensors(files)]
        assert names and "loading weights" not in capsys.readouterr().err
        logging.getLogger("sgl").setLevel(logging.INFO)
        assert [n for n, _ in iter_safetensors(files)] == names
        err = capsys.readouterr().err
        assert "loading weights (1 file)" in err and "100%" in err
    finally:
        logging.getLogger("sgl").setLevel(before)


# ---- the periodic lines, on a scripted scheduler -------------------------------------------------------------------
class _FakeScheduler:
    def __init__(self) -> None:
        self.counters = StepCounters()
        self.running = 0
        self.waiting = 0
        self.used = 0

    @property
    def is_idle(self) -> bool:
        return self.running == 0 and self.waiting == 0

    def info(self) -> dict[str, Any]:
        return {"max_total_tokens": 1000, "available_tokens": 1000 - self.used, "evictable_tokens": 0,
                "token_usage": self.used / 1000, "num_running_reqs": self.running, "num_waiting_reqs": self.waiting}


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_decode_lines_fall_every_interval_with_tokens_over_time() -> None:
    s, clock, lines = _FakeScheduler(), _Clock(), []
    log = StatsLog(s, decode_interval=4, clock=clock, emit=lines.append)
    s.running, s.counters.prefill_reqs, s.counters.prompt_tokens, s.counters.generated_tokens = 2, 2, 20, 2  # 2 prefills
    clock.t += 5.0
    log.tick()  # leaves idle: the throughput window opens here, not at the idle start 5 s ago
    assert lines == ["Prefill batch. #new-seq: 2, #new-token: 20, #cached-token: 0, token usage: 0.00, #running-req: 2, "
                     "#queue-req: 0"]
    for step in range(1, 11):
        clock.t += 0.25
        s.counters.decode_steps = step
        s.counters.generated_tokens += 2
        s.used = 22 + 2 * step
        log.tick()
    decodes = [line for line in lines if line.startswith("Decode")]
    assert len(decodes) == 10 // 4
    first, second = (DECODE.search(line) for line in decodes)
    assert first is not None and second is not None
    assert float(first[4]) == pytest.approx(8.0) == float(second[4])  # 2 tokens per 0.25 s step
    assert (int(first[1]), int(first[2]), int(second[2])) == (2, 30, 38)


def test_prefill_lines_gather_admissions_within_the_period() -> None:
    s, clock, lines = _FakeScheduler(), _Clock(), []
    log = StatsLog(s, decode_interval=1000, clock=clock, emit=lines.append)
    s.running = 1
    for i in range(1, 6):  # five admissions 0.1 s apart: the first is logged at once, the rest wait for the period
        s.counters.prefill_reqs += 1
        s.counters.prompt_tokens += 10
        s.counters.cached_tokens += 4 if i > 1 else 0
        log.tick()
        clock.t += 0.1
    assert len(lines) == 1
    clock.t += stats_log.PREFILL_LOG_PERIOD_S
    log.tick()
    last = PREFILL.search(lines[-1])
    assert len(lines) == 2 and last is not None and (int(last[1]), int(last[2]), int(last[3])) == (4, 40 - 16, 16)
    log.tick()
    assert len(lines) == 2  # nothing new, nothing logged


# ---- the periodic lines, from a real engine ------------------------------------------------------------------------
def test_engine_logs_a_decode_line_every_interval_with_its_real_throughput(
    demo_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sgl")
    interval = 6
    with make_engine(demo_model_dir, decode_log_interval=interval) as engine:
        engine.generate("Count the steps", {"max_new_tokens": 40, "temperature": 0, "ignore_eos": True})
        info = settled_info(engine)
    records = [r for r in _messages(caplog, "sgl.core.scheduler.stats_log") if DECODE.search(r.getMessage())]
    assert len(records) == info["decode_steps"] // interval >= 5
    parsed = [DECODE.search(r.getMessage()) for r in records]
    assert all(m is not None and (int(m[1]), int(m[5])) == (1, 0) for m in parsed)
    used = [int(m[2]) for m in parsed if m is not None]
    assert [b - a for a, b in zip(used, used[1:])] == [interval] * (len(used) - 1)  # one new KV slot per step
    # NOTE: one request decodes: each window holds `interval` tokens over the time between two lines. A line's own
    # timestamp may lag the scheduler's clock by a busy machine's jitter, but the lags cancel over the run: the
    # windows that the throughputs imply add up to the time between the first and the last line.
    implied = sum(interval / float(m[4]) for m in parsed[1:] if m is not None)
    assert implied == pytest.approx(records[-1].created - records[0].created, rel=0.3)


def test_engine_prefill_line_counts_new_and_cached_prompt_tokens(
    demo_model_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_log, "PREFILL_LOG_PERIOD_S", 0.0)
    caplog.set_level(logging.INFO, logger="sgl")
    prompt = "A prompt long enough that its second run finds most of it in the radix cache"
    with make_engine(demo_model_dir) as engine:
        n = len(engine.tokenizer.encode(prompt))
        for _ in range(2):
            engine.generate(prompt, {"max_new_tokens": 2, "temperature": 0, "ignore_eos": True})
    lines = [m for r in _messages(caplog, "sgl.core.scheduler.stats_log") if (m := PREFILL.search(r.getMessage()))]
    assert len(lines) == 2
    assert [int(m[1]) for m in lines] == [1, 1]  # one new sequence each
    (new1, cached1), (new2, cached2) = ((int(m[2]), int(m[3])) for m in lines)
    assert (new1, cached1) == (n, 0)
    assert new2 + cached2 == n and cached2 >= n // 2


# ---- the server --------------------------------------------------------------------------------------------------
def test_server_log_has_the_summary_and_decode_lines() -> None:
    from tests.api.conftest import start_server

    srv = start_server("--decode-log-interval", "5")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            r = client.post("/generate", json={"text": "hello", "sampling_params": {
                "max_new_tokens": 24, "temperature": 0, "ignore_eos": True}})
            assert r.status_code == 200, r.text
            info = client.get("/get_server_info").json()
        deadline = time.monotonic() + 10
        while len(DECODE.findall(srv.log())) < info["decode_steps"] // 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        srv.stop()
    log = srv.log()
    w, kv = SUMMARY_WEIGHTS.search(log), SUMMARY_KV.search(log)
    assert w is not None and kv is not None, log
    assert float(w[5]) > 0 and int(kv[1]) == info["max_total_tokens"] == 8192
    decodes = DECODE.findall(log)
    assert len(decodes) == info["decode_steps"] // 5 >= 4, log
    assert all(float(d[3]) > 0 for d in decodes)
    assert "loading weights (1 file)" in log
