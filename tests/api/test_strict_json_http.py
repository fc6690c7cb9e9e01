"""Strict JSON over HTTP: a json_schema chat completion parses with a strict parser when it stops, and one that
max_tokens cuts short answers finish_reason "length" (the client is told, not handed half an object as whole)."""

from __future__ import annotations

import json

import jsonschema
import openai

from sgl.core.grammar.strict_json import has_control_char
from tests.api.conftest import ServerProc

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": "string"},
                                           "n": {"type": "integer"}}, "required": ["ok", "note", "n"]}
FORMAT = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}


def test_json_schema_chat_outputs_are_strict_json_or_say_length(server: ServerProc) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, _strict_response_validation=True)
    messages = [{"role": "user", "content": "Answer in JSON with a note \x10 that says anything."}]
    cut = client.chat.completions.create(model="m", messages=messages, response_format=FORMAT,  # type: ignore
                                         max_tokens=4, temperature=1.0, seed=3)
    text = cut.choices[0].message.content or ""
    assert cut.choices[0].finish_reason == "length" and cut.usage is not None and cut.usage.completion_tokens == 4
    assert text.startswith("{") and not has_control_char(text)
    full = client.chat.completions.create(model="m", messages=messages, response_format=FORMAT,  # type: ignore
                                          max_tokens=96, temperature=1.0, n=3, seed=5)
    for choice in full.choices:
        body = choice.message.content or ""
        assert not has_control_char(body), body
        if choice.finish_reason == "stop":
            jsonschema.validate(json.loads(body, strict=True), SCHEMA)
        else:
            assert choice.finish_reason == "length"
