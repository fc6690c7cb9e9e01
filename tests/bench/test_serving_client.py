"""The serving client against a fake SSE server whose event timings are known."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sgl.bench.launch import launched_server, server_argv
from sgl.bench.serving import arrival_offsets, run_serving
from sgl.bench.workloads import random_workload
from sgl.core.config import ServerArgs
from tests.bench.fake_server import MODEL_ID, FakeConfig, start


@pytest.fixture
def fake() -> Iterator[tuple[str, FakeConfig]]:
    cfg = FakeConfig(ttft=0.15, itl=0.05, bursts=(1, 2, 1))
    server = start(cfg)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", cfg
    finally:
        server.shutdown()
        server.server_close()


def test_sgl_stream_ttft_itl_and_tokens_come_from_event_timings(fake: tuple[str, FakeConfig]) -> None:
    url, cfg = fake
    reqs = random_workload(3, 8, 4, vocab=100, seed=1)
    res = run_serving(url, reqs, "sgl", progress=False)
    assert (res.completed, res.failed) == (3, 0)
    assert res.output_tokens == 12  # 1 + 2 + 1 tokens per request, counted from cumulative output_ids
    assert res.input_tokens == 24
    assert res.ttft.n == 3 and res.itl.n == 3 * 2  # three events: one TTFT and two gaps each
    assert 0.14 <= res.ttft.median < 0.6
    assert 0.045 <= res.itl.median < 0.3
    assert res.e2e.median >= res.ttft.median + 2 * 0.045
    assert res.tpot.median == pytest.approx((res.e2e.median - res.ttft.median) / 3, rel=0.5)
    body = cfg.bodies[0]
    assert body["stream"] is True and body["sampling_params"]["ignore_eos"] is True
    assert body["sampling_params"]["max_new_tokens"] == 4
    assert sorted(map(tuple, (b["input_ids"] for b in cfg.bodies))) == sorted(tuple(r.input_ids) for r in reqs)


def test_sgl_stream_survives_unicode_line_separators_in_text() -> None:
    """U+2028 and U+0085 are legal unescaped in JSON; they must not split an SSE event (they used to: a failure)."""
    cfg = FakeConfig(ttft=0.01, itl=0.01, text="a\u2028b\x85c\r")
    server = start(cfg)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        res = run_serving(url, random_workload(2, 4, 4, vocab=50), "sgl", progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert (res.completed, res.failed, res.output_tokens) == (2, 0, 8), res.errors


def test_openai_stream_counts_chunks_and_takes_usage(fake: tuple[str, FakeConfig]) -> None:
    url, cfg = fake
    res = run_serving(url, random_workload(2, 5, 4, vocab=50), "openai", model=MODEL_ID, progress=False)
    assert (res.completed, res.output_tokens) == (2, 8)
    assert res.itl.n == 2 * 3  # four one-token chunks per request: three gaps
    assert 0.14 <= res.ttft.mean < 0.6
    assert all(b["model"] == MODEL_ID and b["stream"] for b in cfg.bodies)
    assert cfg.bodies[0]["max_tokens"] == 4


def test_max_concurrency_bounds_requests_in_flight(fake: tuple[str, FakeConfig]) -> None:
    url, cfg = fake
    res = run_serving(url, random_workload(4, 4, 4, vocab=50), "sgl", max_concurrency=2, progress=False)
    assert res.completed == 4
    assert cfg.max_in_flight == 2


def test_unlimited_rate_sends_everything_at_once(fake: tuple[str, FakeConfig]) -> None:
    url, cfg = fake
    run_serving(url, random_workload(4, 4, 4, vocab=50), "sgl", request_rate=math.inf, progress=False)
    assert cfg.max_in_flight == 4


def test_failed_requests_are_counted_not_fatal() -> None:
    cfg = FakeConfig(ttft=0.01, itl=0.01, fail_every=2)
    server = start(cfg)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        res = run_serving(url, random_workload(4, 4, 4, vocab=50), "sgl", max_concurrency=1, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert (res.completed, res.failed) == (2, 2)
    assert any("HTTP 400" in e and "bad request from the fake" in e for e in res.errors)
    assert res.output_tokens == 8


def test_poisson_arrivals_have_the_requested_rate_and_inf_sends_at_once() -> None:
    offsets = arrival_offsets(4000, 20.0, seed=3)
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    assert offsets[-1] / (len(offsets) - 1) == pytest.approx(1 / 20.0, rel=0.1)
    assert offsets == arrival_offsets(4000, 20.0, seed=3)
    assert arrival_offsets(3, math.inf) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="request_rate"):
        arrival_offsets(3, 0.0)


def test_server_argv_round_trips_non_default_flags() -> None:
    args = ServerArgs(model_path="/m", disable_radix_cache=True, max_total_tokens=4096, port=0)
    assert server_argv(args) == ["--model-path", "/m", "--max-total-tokens", "4096", "--disable-radix-cache",
                                 "--port", "0"]


def test_launched_server_waits_for_health_and_stops_the_child() -> None:
    script = Path(__file__).with_name("fake_server.py")

    def command(args: ServerArgs) -> list[str]:
        return [sys.executable, str(script), "--port", str(args.port)]

    with launched_server(ServerArgs(port=0), timeout=30, command=command) as url:
        assert httpx.get(url + "/health", trust_env=False).status_code == 200
    with pytest.raises(httpx.HTTPError):  # the child was stopped on the way out
        httpx.get(url + "/health", trust_env=False, timeout=2)


def test_launched_server_reports_a_child_that_dies() -> None:
    die = [sys.executable, "-c", "raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match="exited with code 3"), \
            launched_server(ServerArgs(port=0), timeout=30, command=lambda a: die):
        pass


def test_sgl_counts_agree_with_a_full_parse_of_every_event_shape() -> None:
    """The client's shortcut (ids counted between brackets, meta_info parsed alone) equals json.loads's answer."""
    import json

    from sgl.bench.serving import sgl_counts

    texts = ["", "plain", 'q"uote \\" "output_ids": [1, 2] "meta_info": {}', "é\u2028\x85]", "[[,,]]"]
    metas = [{"completion_tokens": 3, "finish_reason": None},
             {"completion_tokens": 0, "finish_reason": {"type": "abort", "message": '"meta_info": {'}}]
    for text in texts:
        for ids in ([], [7], [1, 20, 300]):
            for meta in metas:
                for extra in ({}, {"index": 4}):
                    event = {"text": text, "output_ids": ids, "meta_info": meta, **extra}
                    for sep in ((", ", ": "), (",", ":")):  # json.dumps's and orjson's spacing
                        data = json.dumps(event, ensure_ascii=False, separators=sep).encode()
                        assert sgl_counts(data) == (len(ids), meta), data
    assert sgl_counts(b'{"error": {"message": "x"}}') is None
    assert sgl_counts(b'{"text": "", "output_ids": null, "meta_info": {"a": [1, 2]}}') is None
