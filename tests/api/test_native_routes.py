"""SGLang's native routes over httpx: shapes, streaming, logprobs, info, cache, abort, disconnect, metrics."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import ServerProc, pool_is_whole


@pytest.fixture(scope="module")
def http(server: ServerProc) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _events(resp: httpx.Response) -> list[Any]:
    out = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_generate_returns_sglangs_shape_for_one_prompt_a_batch_and_n(http: httpx.Client) -> None:
    one = http.post("/generate", json={"text": "hello", "sampling_params": {"max_new_tokens": 3, "ignore_eos": True}})
    assert one.status_code == 200
    body = one.json()
    assert set(body) == {"text", "output_ids", "meta_info"} and len(body["output_ids"]) == 3
    assert body["meta_info"]["finish_reason"]["type"] == "length"
    batch = http.post("/generate", json={"input_ids": [[5, 6, 7], [8, 9]], "sampling_params": {"max_new_tokens": 2}})
    assert [r["meta_info"]["prompt_tokens"] for r in batch.json()] == [3, 2]
    many = http.post("/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 2, "n": 2}})
    assert len(many.json()) == 2


def test_generate_accepts_nulls_for_unset_fields(http: httpx.Client) -> None:
    resp = http.post("/generate", json={
        "text": "hello", "input_ids": None, "rid": None, "return_logprob": None, "logprob_start_len": None,
        "top_logprobs_num": None, "stream": None,
        "sampling_params": {"max_new_tokens": 2, "temperature": None, "top_p": None, "stop": None},
    })
    assert resp.status_code == 200, resp.text


def test_generate_stream_is_cumulative_and_ends_with_done(http: httpx.Client) -> None:
    payload = {"text": "The sea", "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}}
    full = http.post("/generate", json=payload).json()
    with http.stream("POST", "/generate", json={**payload, "stream": True}) as resp:
        events = _events(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    lengths = [len(c["output_ids"]) for c in chunks]
    assert lengths == sorted(lengths) and lengths[-1] == 8
    assert chunks[-1]["text"] == full["text"] and chunks[-1]["output_ids"] == full["output_ids"]


def test_return_logprob_gives_prompt_and_output_logprobs(http: httpx.Client) -> None:
    resp = http.post("/generate", json={
        "input_ids": [10, 11, 12, 13, 14], "sampling_params": {"max_new_tokens": 3, "ignore_eos": True},
        "return_logprob": True, "logprob_start_len": 1, "top_logprobs_num": 2, "return_text_in_logprobs": True,
    }).json()
    meta = resp["meta_info"]
    assert len(meta["output_token_logprobs"]) == 3
    assert [e[1] for e in meta["output_token_logprobs"]] == resp["output_ids"]
    assert all(len(t) == 2 for t in meta["output_top_logprobs"])
    assert [e[1] for e in meta["input_token_logprobs"]] == [11, 12, 13, 14]


def test_tokenize_and_detokenize_round_trip(http: httpx.Client) -> None:
    tok = http.post("/tokenize", json={"prompt": "hello world", "add_special_tokens": False}).json()
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 1024
    assert http.post("/detokenize", json={"tokens": tok["tokens"]}).json()["text"] == "hello world"


def test_model_and_server_info_describe_the_model_and_the_pool(http: httpx.Client) -> None:
    model = http.get("/get_model_info").json()
    assert model["is_generation"] is True and model["context_length"] == 1024
    info = http.get("/get_server_info").json()
    assert info["max_total_tokens"] == 8192
    for key in ("available_tokens", "evictable_tokens", "locked_tokens", "token_usage", "num_waiting_reqs"):
        assert key in info
    assert info["server_args"]["api_key"] == "<redacted>"


def test_flush_cache_empties_the_prefix_cache_when_idle(http: httpx.Client) -> None:
    http.post("/generate", json={"text": "cache me please", "sampling_params": {"max_new_tokens": 2}})
    resp = http.post("/flush_cache")
    assert resp.status_code == 200 and resp.json()["success"] is True
    info = pool_is_whole(http)
    assert info["evictable_tokens"] == 0 and info["available_tokens"] == 8192


def test_health_generate_produces_a_token(server: ServerProc) -> None:
    assert httpx.get(f"{server.url}/health_generate", timeout=30).status_code == 200


def test_abort_request_ends_a_running_stream_with_an_abort(http: httpx.Client, server: ServerProc) -> None:
    payload = {"text": "go on", "rid": "to-abort", "stream": True,
               "sampling_params": {"max_new_tokens": 500, "ignore_eos": True}}
    with http.stream("POST", "/generate", json=payload) as resp:
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["meta_info"]["finish_reason"] is None
        with server.client() as other:
            assert other.post("/abort_request", json={"rid": "to-abort"}).status_code == 200
        events = [json.loads(x[6:]) for x in lines if x.startswith("data: ") and x != "data: [DONE]"]
    assert events[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(events[-1]["output_ids"]) < 500
    pool_is_whole(http)


def test_client_disconnect_mid_stream_frees_the_kv_pool(http: httpx.Client, server: ServerProc) -> None:
    with server.client() as c, c.stream("POST", "/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "talk"}], "max_tokens": 500, "stream": True,
        "ignore_eos": True,
    }) as resp:
        got = 0
        busy: dict[str, Any] = {}
        for line in resp.iter_lines():
            got += line.startswith("data: ")
            if got >= 3:
                busy = http.get("/get_server_info").json()
                break  # NOTE: leaving the iterator closes the connection: the client is gone
        assert busy["num_running_reqs"] + busy["num_waiting_reqs"] >= 1
    info = pool_is_whole(http)
    assert info["locked_tokens"] == 0
    assert info["available_tokens"] + info["evictable_tokens"] == info["max_total_tokens"]


@pytest.mark.parametrize("route,body", [
    ("/generate", {"text": "talk", "sampling_params": {"max_new_tokens": 500, "ignore_eos": True}}),
    ("/v1/completions", {"model": "m", "prompt": "talk", "max_tokens": 500, "ignore_eos": True}),
])
def test_client_disconnect_without_streaming_aborts_and_frees_the_kv_pool(
    http: httpx.Client, server: ServerProc, route: str, body: dict[str, Any]
) -> None:
    before = pool_is_whole(http)["generated_tokens"]
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=0.5) as c, \
            pytest.raises(httpx.TimeoutException):
        c.post(route, json=body)  # the client gives up long before 500 tokens; its connection closes
    info = pool_is_whole(http)
    assert info["locked_tokens"] == 0 and info["num_running_reqs"] == 0
    assert info["generated_tokens"] - before < 500  # type: ignore[operator]  # aborted, not run to the end


def test_metrics_expose_counters_gauges_and_latency_histograms(http: httpx.Client) -> None:
    http.post("/generate", json={"text": "metrics", "sampling_params": {"max_new_tokens": 4, "ignore_eos": True}})
    resp = http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for family in ("sgl_requests_total", "sgl_prompt_tokens_total", "sgl_generation_tokens_total",
                   "sgl_num_running_reqs", "sgl_num_queue_reqs", "sgl_token_usage", "sgl_cache_hit_rate"):
        assert f"# TYPE {family} " in text
    for hist in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds"):
        assert f"# TYPE sgl_{hist} histogram" in text and f'sgl_{hist}_bucket{{le="+Inf"}}' in text
    count = next(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("sgl_e2e_request_latency_seconds_count"))
    assert count >= 1


def test_concurrent_bad_requests_do_not_disturb_a_running_one(http: httpx.Client, server: ServerProc) -> None:
    result: dict[str, Any] = {}

    def good() -> None:
        with server.client() as c:
            result["r"] = c.post("/generate", json={"text": "steady", "sampling_params": {
                "max_new_tokens": 40, "ignore_eos": True}})

    t = threading.Thread(target=good)
    t.start()
    time.sleep(0.2)
    for bad in ({"text": "x", "sampling_params": {"temperature": -1}}, {"input_ids": [999999]},
                {"text": "x" * 3, "sampling_params": {"max_new_tokens": 5000}}, {"text": ""}):
        assert http.post("/generate", json=bad).status_code == 400
    t.join(60)
    assert result["r"].status_code == 200 and len(result["r"].json()["output_ids"]) == 40
