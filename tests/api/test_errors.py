"""Every error path answers OpenAI's error JSON with the right status; FastAPI's 422 never appears."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import ServerProc

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def http(server: ServerProc) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err  # type: ignore[no-any-return]


def test_missing_or_wrong_api_key_is_401_but_health_stays_open(server: ServerProc) -> None:
    _error(httpx.post(f"{server.url}/v1/chat/completions", json=CHAT), 401)
    _error(httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    _error(httpx.get(f"{server.url}/metrics"), 401)
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize("body, param", [
    ({**CHAT, "temperature": -1}, "temperature"),
    ({**CHAT, "top_p": 0}, "top_p"),
    ({**CHAT, "max_tokens": "many"}, "max_tokens"),
    ({**CHAT, "not_a_field": 1}, "not_a_field"),
    ({"model": "m", "messages": []}, "messages"),
    ({**CHAT, "top_logprobs": 2}, "top_logprobs"),
    ({**CHAT, "n": 5}, "n"),
    ({**CHAT, "max_tokens": 600}, "max_tokens"),
])
def test_invalid_chat_requests_are_400_naming_the_field(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    err = _error(http.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param


def test_malformed_json_and_wrong_body_types_are_400(http: httpx.Client) -> None:
    _error(http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
    _error(http.post("/v1/completions", json=[1, 2]), 400)
    _error(http.post("/v1/completions", json={"prompt": [], "max_tokens": 1}), 400)
    _error(http.post("/generate", json={"text": "a", "input_ids": [1]}), 400)


def test_prompt_longer_than_the_context_is_400_naming_both_lengths(http: httpx.Client) -> None:
    err = _error(http.post("/v1/completions", json={"prompt": list(range(1, 1101)), "max_tokens": 1}), 400)
    assert "1100" in err["message"] and "1024" in err["message"]
    err = _error(http.post("/v1/completions", json={"prompt": list(range(1, 1001)), "max_tokens": 100}), 400)
    assert "1000" in err["message"] and "1024" in err["message"]


def test_out_of_vocabulary_token_ids_are_400(http: httpx.Client) -> None:
    _error(http.post("/v1/completions", json={"prompt": [1, 2, 10**6], "max_tokens": 1}), 400)
    _error(http.post("/detokenize", json={"tokens": [-1]}), 400)
    _error(http.post("/v1/chat/completions", json={**CHAT, "logit_bias": {"999999": 1}}), 400)


def test_unknown_model_and_route_are_404(http: httpx.Client) -> None:
    err = _error(http.get("/v1/models/no-such-model"), 404)
    assert err["code"] == "model_not_found"
    _error(http.get("/v1/nothing-here"), 404)


def test_body_over_the_cap_is_413(http: httpx.Client) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 70000}]}
    _error(http.post("/v1/chat/completions", json=big), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is counted as the body arrives
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 2000
        yield b'"}]}'

    _error(http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_unknown_chat_role_is_a_400_from_the_template(http: httpx.Client) -> None:
    _error(http.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}), 400)


def test_cors_answers_only_the_allowed_origin(server: ServerProc) -> None:
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(f"{server.url}/v1/chat/completions", headers={"Origin": "http://allowed.test", **pre})
    assert ok.headers.get("access-control-allow-origin") == "http://allowed.test"
    other = httpx.options(f"{server.url}/v1/chat/completions", headers={"Origin": "http://evil.test", **pre})
    assert other.headers.get("access-control-allow-origin") is None


def test_abort_request_without_a_target_is_400(http: httpx.Client) -> None:
    _error(http.post("/abort_request", json={}), 400)
