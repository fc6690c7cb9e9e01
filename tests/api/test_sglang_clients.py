"""The tools SGLang users already point at a server work against `sgl serve` unchanged.

Each request below is the shape that tool sends, written down from its source (SGLang's repository), with the fields
it reads from the answer; no network is involved. The sources:

- bench_serving: ``python/sglang/bench_serving.py`` and ``python/sglang/benchmark/backends/*_client.py``. Backends
  ``sglang`` and ``sglang-native`` POST /generate; ``sglang-oai``, ``vllm``, ``lmdeploy`` POST /v1/completions;
  ``sglang-oai-chat``, ``vllm-chat``, ``lmdeploy-chat`` POST /v1/chat/completions (older versions send
  ``max_tokens``, newer ``max_completion_tokens``). Around the run: GET /v1/models (the model id), POST
  /flush_cache, GET /get_server_info (``internal_states[0]``; bench_one_batch_server reads ``last_gen_throughput``).
  (``trt``, ``truss`` and ``gserver`` target other servers' routes.)
- the frontend language's RuntimeEndpoint: ``python/sglang/lang/backend/runtime_endpoint.py`` (its sampling params
  are ``SglSamplingParams.to_srt_kwargs()`` of ``python/sglang/lang/ir.py``, unset stops as empty lists).
- sglang-router's worker protocol: ``sgl-router/src/core/workflow/steps/worker_registration.rs`` (GET /health, GET
  /get_server_info: model_path, dp_size, version, max_total_tokens, ...), ``sgl-router/src/routers/http/router.rs``
  (proxies /health_generate, /get_server_info, /get_model_info, /v1/models; fans out /flush_cache, /get_load) and
  ``sgl-router/src/protocols/{generate,completion,chat}.rs``: the router re-serializes each request, so its defaults
  (``log_metrics: true``, ``separate_reasoning: true``, ``return_hidden_states: false``, ...) arrive on every request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import ServerProc

PROMPT = "The quick brown fox jumps over"
OUT = 6


@pytest.fixture(scope="module")
def http(server: ServerProc) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def model(http: httpx.Client) -> str:
    return str(http.get("/v1/models").json()["data"][0]["id"])  # bench_serving without --model


def _events(resp: httpx.Response) -> list[Any]:
    assert resp.status_code == 200, resp.read().decode()
    out = []
    for line in resp.iter_lines():
        line = line.strip()
        if line.startswith("data:"):
            data = line[len("data:"):].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    assert out and out[-1] == "[DONE]"
    return out[:-1]


def _post_stream(http: httpx.Client, route: str, body: dict[str, Any]) -> list[Any]:
    with http.stream("POST", route, json=body) as resp:
        return _events(resp)


# --- bench_serving --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_key, prompt", [("text", PROMPT), ("input_ids", [11, 12, 13, 14])])
@pytest.mark.parametrize("stream", [True, False])
def test_bench_serving_native_backends(http: httpx.Client, prompt_key: str, prompt: Any, stream: bool) -> None:
    body = {prompt_key: prompt,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": OUT, "ignore_eos": True},
            "stream": stream, "lora_path": None, "return_logprob": False, "logprob_start_len": -1}
    if stream:
        events = _post_stream(http, "/generate", body)
        last = [e for e in events if e["text"]][-1]  # it reads data["text"] and data["meta_info"]["completion_tokens"]
    else:
        last = http.post("/generate", json=body).json()
    assert last["meta_info"]["completion_tokens"] == OUT and isinstance(last["text"], str)


@pytest.mark.parametrize("stream", [True, False])
def test_bench_serving_completions_backends(http: httpx.Client, model: str, stream: bool) -> None:
    body = {"model": model, "prompt": PROMPT, "temperature": 0.0, "best_of": 1, "max_tokens": OUT, "stream": stream,
            "ignore_eos": True}
    if stream:
        chunks = _post_stream(http, "/v1/completions", body)
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    else:
        resp = http.post("/v1/completions", json=body).json()
        text = resp["choices"][0]["text"]
        assert resp["usage"]["completion_tokens"] == OUT
    assert text


@pytest.mark.parametrize("max_key", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("stream", [True, False])
def test_bench_serving_chat_backends(http: httpx.Client, model: str, max_key: str, stream: bool) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], max_key: OUT, "stream": stream,
            "temperature": 0.0, "ignore_eos": True}
    if stream:
        chunks = _post_stream(http, "/v1/chat/completions", body)
        text = "".join((c["choices"][0].get("delta") or {}).get("content") or "" for c in chunks if c["choices"])
    else:
        resp = http.post("/v1/chat/completions", json=body).json()
        text = resp["choices"][0]["message"]["content"]
        assert resp["usage"].get("completion_tokens") == OUT
    assert text


def test_bench_serving_lora_name_is_refused_clearly(http: httpx.Client) -> None:
    resp = http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 2},
                                        "lora_path": "adapter-1"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "lora_path"


def test_bench_serving_around_the_run(http: httpx.Client) -> None:
    assert http.post("/flush_cache").status_code == 200
    info = http.get("/get_server_info").json()
    if "decode" in info:  # what bench_serving checks first (a PD deployment)
        info = info["decode"][0]
    state = info["internal_states"][0]
    assert state.get("avg_spec_accept_length") is None  # read with .get: no speculative decoding here
    assert isinstance(state["last_gen_throughput"], float)


# --- the frontend language's RuntimeEndpoint -----------------------------------------------------------------

SRT_KWARGS = {  # SglSamplingParams.to_srt_kwargs() with the frontend's defaults
    "max_new_tokens": OUT, "min_new_tokens": 0, "n": 1, "stop": [], "stop_token_ids": [], "stop_regex": [],
    "temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
    "ignore_eos": False, "regex": None, "json_schema": None,
}


def test_runtime_endpoint_setup_calls(http: httpx.Client) -> None:
    info = http.get("/get_model_info").json()
    assert isinstance(info["model_path"], str) and info["is_generation"] is True
    assert http.post("/flush_cache", json={"empty_cache": True}).status_code == 200
    assert "internal_states" in http.get("/get_server_info").json()
    cached = http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 0}})
    assert cached.status_code == 200 and cached.json()["meta_info"]["prompt_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_runtime_endpoint_generate(http: httpx.Client, stream: bool) -> None:
    body: dict[str, Any] = {
        "text": PROMPT,
        "sampling_params": {"skip_special_tokens": True, "spaces_between_special_tokens": True, **SRT_KWARGS},
        "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 2, "return_text_in_logprobs": True,
    }
    if stream:
        events = _post_stream(http, "/generate", {**body, "stream": True})
        assert all(isinstance(e["text"], str) and "meta_info" in e for e in events)
        out = events[-1]
    else:
        out = http.post("/generate", json=body).json()
    meta = out["meta_info"]
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] > 0
    assert all(len(e) == 3 and isinstance(e[2], str) for e in meta["output_token_logprobs"])


def test_runtime_endpoint_select(http: httpx.Client) -> None:
    prompt_len = http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 0}}
                           ).json()["meta_info"]["prompt_tokens"]
    choices = [" the lazy dog", " a fence"]
    out = http.post("/generate", json={
        "text": [PROMPT + c for c in choices], "sampling_params": {"max_new_tokens": 0, "temperature": 0},
        "return_logprob": True, "return_text_in_logprobs": True, "logprob_start_len": max(prompt_len - 2, 0)}).json()
    assert len(out) == 2
    for r in out:
        logprobs = r["meta_info"]["input_token_logprobs"]
        assert isinstance(logprobs[0][-1], str)  # the healed token's text
        assert r["meta_info"]["output_token_logprobs"] == []
        assert [x[0] for x in logprobs if x[0]]  # compute_normalized_prompt_logprobs
    ids = [[e[1] for e in r["meta_info"]["input_token_logprobs"]] for r in out]
    unconditional = http.post("/generate", json={"input_ids": ids, "sampling_params": {"max_new_tokens": 0},
                                                 "return_logprob": True})
    assert unconditional.status_code == 200 and len(unconditional.json()) == 2


# --- sglang-router ---------------------------------------------------------------------------------------------


def test_router_worker_registration_and_health(server: ServerProc, http: httpx.Client) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert http.get("/health_generate").status_code == 200
    info = http.get("/get_server_info").json()
    for key, kind in (("model_path", str), ("dp_size", int), ("version", str), ("max_total_tokens", int),
                      ("max_prefill_tokens", int), ("max_running_requests", int)):
        assert isinstance(info[key], kind), key
    assert http.get("/server_info").json()["model_path"] == info["model_path"]
    assert http.get("/model_info").json() == http.get("/get_model_info").json()
    assert http.get("/v1/models").json()["data"][0]["id"]


def test_router_load_probe(http: httpx.Client) -> None:
    loads = http.get("/get_load").json()
    assert [load["dp_rank"] for load in loads] == [0]
    assert {"num_reqs", "num_waiting_reqs", "num_tokens"} <= set(loads[0])


def test_router_reserialized_generate(http: httpx.Client) -> None:
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": OUT, "temperature": 0.0, "sampling_seed": 1},
            "return_text_in_logprobs": False, "stream": False, "log_metrics": True, "return_hidden_states": False,
            "background": False, "no_logs": False, "return_bytes": False, "return_entropy": False}
    resp = http.post("/generate", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["meta_info"]["finish_reason"] is not None


def test_router_reserialized_completion(http: httpx.Client, model: str) -> None:
    body = {"model": model, "prompt": PROMPT, "max_tokens": OUT, "stream": False, "echo": False,
            "no_stop_trim": False, "ignore_eos": False, "skip_special_tokens": True, "return_hidden_states": False}
    resp = http.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text


def test_router_reserialized_chat(http: httpx.Client, model: str) -> None:
    body = {"messages": [{"role": "user", "content": PROMPT}], "model": model, "logprobs": False,
            "max_completion_tokens": OUT, "stream": False, "no_stop_trim": False, "ignore_eos": False,
            "continue_final_message": False, "skip_special_tokens": True, "separate_reasoning": True,
            "stream_reasoning": True, "return_hidden_states": False}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    # data-parallel-aware routing adds the replica's rank: one replica, rank 0
    resp = http.post("/v1/chat/completions", json={**body, "data_parallel_rank": 0})
    assert resp.status_code == 200, resp.text
