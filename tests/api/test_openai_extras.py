"""SGLang's request extras on the OpenAI routes: each one sgl accepts works, each one it does not is a 400 naming it.

The openai client sends them through ``extra_body``, at the top level of the body, as SGLang reads them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from sgl.api.openai_common import sampling_params
from sgl.api.openai_protocol import ChatCompletionRequest, CompletionRequest
from sgl.core.request_input import sampling_params_of
from tests.api.conftest import ServerProc

pytest.importorskip("xgrammar")

MESSAGES = [{"role": "user", "content": "Write a code."}]
CHAT = {"model": "m", "messages": MESSAGES, "max_tokens": 4}


@pytest.fixture(scope="module")
def client(server: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, _strict_response_validation=True)


@pytest.fixture(scope="module")
def http(server: ServerProc) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


# Each extra with a value that is not its default, and the SamplingParams field and value it must become.
EXTRAS: list[tuple[str, Any, str, Any]] = [
    ("top_k", 7, "top_k", 7),
    ("min_p", 0.2, "min_p", 0.2),
    ("repetition_penalty", 1.3, "repetition_penalty", 1.3),
    ("min_tokens", 3, "min_new_tokens", 3),
    ("stop_token_ids", [5, 6], "stop_token_ids", [5, 6]),
    ("ignore_eos", True, "ignore_eos", True),
    ("skip_special_tokens", False, "skip_special_tokens", False),
    ("no_stop_trim", True, "no_stop_trim", True),
    ("regex", "[ab]+", "regex", "[ab]+"),
    ("ebnf", 'root ::= "x"', "ebnf", 'root ::= "x"'),
    ("json_schema", '{"type": "integer"}', "json_schema", '{"type": "integer"}'),
    ("json_schema", {"type": "integer"}, "json_schema", '{"type": "integer"}'),
    ("sampling_seed", 11, "seed", 11),
]


@pytest.mark.parametrize("name, value, field, expected", EXTRAS)
@pytest.mark.parametrize("route", [CompletionRequest, ChatCompletionRequest])
def test_every_accepted_extra_reaches_sampling_params(route: type, name: str, value: Any, field: str,
                                                      expected: Any) -> None:
    body = {"prompt": "x"} if route is CompletionRequest else {"messages": MESSAGES}
    req = route.model_validate({**body, name: value})
    params, _ = sampling_params_of(sampling_params(req))
    assert getattr(params, field) == expected


def test_completion_regex_and_ebnf_constrain_the_text(client: openai.OpenAI) -> None:
    pattern = r"[a-z]{3,6}-[0-9]{2}"
    resp = client.completions.create(model="m", prompt="A code:", max_tokens=24, temperature=0.8,
                                     extra_body={"regex": pattern})
    assert resp.choices[0].finish_reason == "stop"
    assert re.fullmatch(pattern, resp.choices[0].text), resp.choices[0].text
    resp = client.completions.create(model="m", prompt="Yes or no?", max_tokens=8,
                                     extra_body={"ebnf": 'root ::= "yes" | "no"'})
    assert resp.choices[0].text in ("yes", "no")


def test_chat_regex_and_json_schema_extras_constrain_the_message(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16,  # type: ignore[arg-type]
                                          extra_body={"regex": "(red|green|blue)"})
    assert resp.choices[0].message.content in ("red", "green", "blue")
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    resp = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=32,  # type: ignore[arg-type]
                                          extra_body={"json_schema": json.dumps(schema)})
    assert set(json.loads(resp.choices[0].message.content or "")) == {"n"}


def test_completions_take_response_format_too(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    resp = client.completions.create(model="m", prompt="JSON:", max_tokens=32, extra_body={
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}})
    assert isinstance(json.loads(resp.choices[0].text)["ok"], bool)


@pytest.mark.parametrize("fmt, param", [
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "not an object"}},
     "response_format.json_schema.schema"),
    ({"type": "structural_tag"}, "response_format"),
])
def test_response_format_without_a_schema_is_400_naming_the_field(http: httpx.Client, fmt: dict[str, Any],
                                                                  param: str) -> None:
    resp = http.post("/v1/chat/completions", json={**CHAT, "response_format": fmt})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_response_format_and_a_native_constraint_together_are_400(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={**CHAT, "response_format": {"type": "json_object"},
                                                   "regex": "a+"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "response_format"


def test_top_k_1_and_min_p_1_sample_the_greedy_tokens(client: openai.OpenAI) -> None:
    def text(temperature: float, **extra: Any) -> str:
        return client.completions.create(model="m", prompt="The sea is", max_tokens=8, seed=3, temperature=temperature,
                                         extra_body={"ignore_eos": True, **extra}).choices[0].text

    greedy = text(0.0)
    assert text(1.0, top_k=1) == greedy
    assert text(1.0, min_p=1.0) == greedy


def _greedy_ids(http: httpx.Client, n: int) -> list[int]:
    return list(http.post("/generate", json={"text": "Once", "sampling_params": {
        "max_new_tokens": n, "temperature": 0.0, "ignore_eos": True}}).json()["output_ids"])


def test_stop_token_ids_end_the_completion_and_min_tokens_delays_them(http: httpx.Client) -> None:
    ids = _greedy_ids(http, 6)
    body = {"prompt": "Once", "max_tokens": 6, "temperature": 0.0, "ignore_eos": True, "stop_token_ids": [ids[2]]}
    resp = http.post("/v1/completions", json=body).json()
    assert resp["choices"][0]["finish_reason"] == "stop"
    assert resp["usage"]["completion_tokens"] == ids.index(ids[2]) + 1
    delayed = http.post("/v1/completions", json={**body, "stop_token_ids": [ids[0]], "min_tokens": 4}).json()
    assert delayed["usage"]["completion_tokens"] >= 4


def test_no_stop_trim_keeps_the_stop_string(client: openai.OpenAI) -> None:
    base = client.completions.create(model="m", prompt="Once", max_tokens=6, temperature=0.0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = base.strip()[-3:]
    kept = client.completions.create(model="m", prompt="Once", max_tokens=6, temperature=0.0, stop=[stop],
                                     extra_body={"ignore_eos": True, "no_stop_trim": True}).choices[0]
    trimmed = client.completions.create(model="m", prompt="Once", max_tokens=6, temperature=0.0, stop=[stop],
                                        extra_body={"ignore_eos": True}).choices[0]
    assert kept.finish_reason == trimmed.finish_reason == "stop"
    assert kept.text.endswith(stop) and kept.text == trimmed.text + stop


@pytest.mark.parametrize("field, neutral, refused", [
    ("lora_path", None, "my-adapter"),
    ("return_hidden_states", False, True),
    ("data_parallel_rank", 0, 1),
    ("session_params", None, {"id": "s"}),
    ("stop_regex", None, "x+"),
    ("priority", None, 3),
    ("image_data", None, "http://x/y.png"),
])
@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_unsupported_extras_pass_when_neutral_and_are_400_naming_them_otherwise(
    http: httpx.Client, route: str, field: str, neutral: Any, refused: Any
) -> None:
    body = {"model": "m", "max_tokens": 2, **({"prompt": "hi"} if "chat" not in route else {"messages": MESSAGES})}
    assert http.post(route, json={**body, field: neutral}).status_code == 200
    resp = http.post(route, json={**body, field: refused})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == field and "not supported" in err["message"]


@pytest.mark.parametrize("field, neutral, refused", [
    ("tools", [], [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "none", "required"),
    ("continue_final_message", False, True),
    ("reasoning_effort", None, "high"),
])
def test_chat_only_unsupported_extras_are_refused_unless_neutral(http: httpx.Client, field: str, neutral: Any,
                                                                 refused: Any) -> None:
    assert http.post("/v1/chat/completions", json={**CHAT, field: neutral}).status_code == 200
    resp = http.post("/v1/chat/completions", json={**CHAT, field: refused})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == field


def test_custom_params_are_refused_for_want_of_a_logit_processor(http: httpx.Client) -> None:
    resp = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "custom_params": {"a": 1}})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "custom_params"


def test_reasoning_switches_are_accepted_and_answer_alike(client: openai.OpenAI) -> None:
    def text(flag: bool) -> str:
        return client.chat.completions.create(
            model="m", messages=MESSAGES, max_tokens=6, temperature=0.0,  # type: ignore[arg-type]
            extra_body={"separate_reasoning": flag, "stream_reasoning": flag}).choices[0].message.content or ""

    assert text(True) == text(False)
