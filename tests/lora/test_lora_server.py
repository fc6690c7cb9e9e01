"""LoRA over HTTP with SGLang's and OpenAI's clients' shapes: native /generate takes lora_path (one name or one per
prompt), the OpenAI routes take the adapter as ``model`` ("adapter" or "base:adapter"), /v1/models lists adapters
with the base model as parent, and adapters load and unload while serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.api.conftest import ServerProc, pool_is_whole, start_server
from tests.lora.peft_adapters import make_peft_adapter

GREEDY = {"temperature": 0.0, "max_new_tokens": 8, "ignore_eos": True}
PROMPT = "Once upon a time, in a land far away,"


@pytest.fixture(scope="module")
def lora_server(demo_model_dir: Path, adapters: dict[str, str]) -> Iterator[ServerProc]:
    srv = start_server("--model-path", str(demo_model_dir), "--lora-paths", f"r4={adapters['r4']}",
                       f"r16={adapters['r16']}", "--max-lora-rank", "16", "--served-model-name", "base")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def http(lora_server: ServerProc) -> Iterator[httpx.Client]:
    with lora_server.client() as c:
        yield c


@pytest.fixture
def client(lora_server: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lora_server.url}/v1", api_key="none", max_retries=0)


def _ids(http: httpx.Client, lora: str | None) -> list[int]:
    resp = http.post("/generate", json={"text": PROMPT, "sampling_params": GREEDY, "lora_path": lora})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["output_ids"])


def test_native_generate_takes_one_adapter_or_one_per_prompt(http: httpx.Client) -> None:
    alone = {lora: _ids(http, lora) for lora in ("r4", "r16", None)}
    assert len({tuple(v) for v in alone.values()}) == 3
    loras = ["r16", None, "r4"]
    resp = http.post("/generate", json={"text": [PROMPT] * 3, "sampling_params": GREEDY, "lora_path": loras})
    assert resp.status_code == 200, resp.text
    assert [o["output_ids"] for o in resp.json()] == [alone[x] for x in loras]


def test_openai_routes_take_the_adapter_as_model(http: httpx.Client, client: openai.OpenAI) -> None:
    want = http.post("/generate", json={"text": PROMPT, "sampling_params": dict(GREEDY, skip_special_tokens=True),
                                        "lora_path": "r4"}).json()["text"]
    for model in ("r4", "base:r4"):
        got = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0.0,
                                        extra_body={"ignore_eos": True})
        assert got.choices[0].text == want
    base = client.completions.create(model="base", prompt=PROMPT, max_tokens=8, temperature=0.0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    assert base != want
    chat = client.chat.completions.create(model="r16", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                          temperature=0.0)
    assert chat.choices[0].message.content is not None


def test_unknown_adapter_is_a_400_naming_it_and_the_loaded_ones(http: httpx.Client, client: openai.OpenAI) -> None:
    resp = http.post("/generate", json={"text": PROMPT, "sampling_params": GREEDY, "lora_path": "nope"})
    assert resp.status_code == 400 and "'nope'" in resp.text and "r4" in resp.text
    with pytest.raises(openai.BadRequestError, match="nope"):
        client.completions.create(model="nope", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.models.retrieve("nope")


def test_models_list_adapters_with_the_base_as_parent(client: openai.OpenAI, adapters: dict[str, str]) -> None:
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"base", "r4", "r16"}
    assert cards["r4"].parent == "base" and cards["r4"].root == adapters["r4"]  # type: ignore[attr-defined]
    assert client.models.retrieve("r16").parent == "base"  # type: ignore[attr-defined]


def test_load_and_unload_while_serving(http: httpx.Client, client: openai.OpenAI, demo_model_dir: Path,
                                       tmp_path: Path, adapters: dict[str, str]) -> None:
    path = make_peft_adapter(demo_model_dir, tmp_path / "late", rank=8, seed=7)
    resp = http.post("/load_lora_adapter", json={"lora_name": "late", "lora_path": path})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["success"] is True and body["loaded_adapters"]["late"] == path
    assert "late" in {m.id for m in client.models.list().data}
    assert _ids(http, "late") != _ids(http, None)
    again = http.post("/load_lora_adapter", json={"lora_name": "late", "lora_path": path})
    assert again.status_code == 400 and again.json()["success"] is False
    assert "already loaded" in again.json()["error_message"]
    big = make_peft_adapter(demo_model_dir, tmp_path / "big", rank=32, seed=8)
    refused = http.post("/load_lora_adapter", json={"lora_name": "big", "lora_path": big}).json()
    assert refused["success"] is False and "exceeds --max-lora-rank 16" in refused["error_message"]
    resp = http.post("/unload_lora_adapter", json={"lora_name": "late"})
    assert resp.status_code == 200 and "late" not in resp.json()["loaded_adapters"]
    assert http.post("/generate", json={"text": PROMPT, "sampling_params": GREEDY,
                                        "lora_path": "late"}).status_code == 400
    assert http.post("/unload_lora_adapter", json={"lora_name": "late"}).status_code == 400
    pool_is_whole(http)


def test_lora_path_on_a_server_without_lora_is_refused(demo_model_dir: Path) -> None:
    srv = start_server("--model-path", str(demo_model_dir))
    try:
        with srv.client() as http:
            resp = http.post("/generate", json={"text": PROMPT, "sampling_params": GREEDY, "lora_path": "a"})
            assert resp.status_code == 400 and resp.json()["error"]["param"] == "lora_path"
            assert "not enabled" in resp.text
            load = http.post("/load_lora_adapter", json={"lora_name": "a", "lora_path": "/x"})
            assert load.status_code == 400 and "not enabled" in load.json()["error_message"]
    finally:
        srv.stop()
