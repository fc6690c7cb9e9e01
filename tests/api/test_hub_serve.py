"""`sgl serve` launched as an SGLang script would launch it: a Hub id (offline, from a cache laid out by the test),
SGLang's spellings and accepted flags, and a chat template file; the server answers under the Hub id."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgl.core.tokenizer.tokenizer import Tokenizer
from tests.api.conftest import start_server
from tests.core.hub_cache import make_hub_cache, offline_env

TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "


def test_serve_a_hub_id_with_sglang_flags_answers_under_the_id(
    tmp_path: Path, demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    snapshot = make_hub_cache(cache, "org/tiny", {"main": demo_model_dir})["main"]
    for key, value in offline_env(cache).items():
        monkeypatch.setenv(key, value)
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    srv = start_server(
        "--model", "org/tiny", "--device", "cpu", "--tp", "1", "--dp-size", "1", "--trust-remote-code",
        "--enable-metrics", "--chat-template", str(template), "--dtype", "float", "--random-seed", "7",
    )
    try:
        with srv.client() as client:
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["org/tiny"]
            info = client.get("/get_model_info").json()
            assert info["model_path"] == str(snapshot)
            messages = [{"role": "user", "content": "Hello there"}]
            reply = client.post("/v1/chat/completions", json={"model": "org/tiny", "messages": messages,
                                                              "max_tokens": 4, "temperature": 0})
            assert reply.status_code == 200, reply.text
            prompt = Tokenizer.from_dir(demo_model_dir).encode("[user] Hello there\n[assistant] ",
                                                                 add_special_tokens=False)
            assert reply.json()["usage"]["prompt_tokens"] == len(prompt)
            assert client.get("/metrics").status_code == 200
    finally:
        assert srv.stop() == 0, srv.log()
