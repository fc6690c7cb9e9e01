"""Tool calling through the official openai client against a real server, once per --tool-call-parser.

The model's output is scripted with SGLang's ``ebnf`` extra (the grammar forces the exact text), so each parser reads
what the model really generated, through the same generate, detokenize and parse path as any request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from sgl.core.demo_model import ensure_demo_model
from sgl.core.tokenizer.tokenizer import Tokenizer
from tests.api.conftest import ServerProc
from tests.tools.conftest import TEMPLATE, client_of, tool_server

pytest.importorskip("xgrammar")

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                             "unit": {"type": "string", "enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 12}},
        "required": ["zone"], "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
ARGS = {"city": "Paris", "unit": "c"}

_DS = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{args}\n```<｜tool▁call▁end｜>"
# What a model of each family writes for get_weather(ARGS) (then get_time(zone=1) where there are two calls).
SCRIPTS: dict[str, tuple[str, str]] = {
    "qwen25": ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>',
               '\n<tool_call>\n{"name": "get_time", "arguments": {"zone": 1}}\n</tool_call>'),
    "llama3": ('{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}',
               '; {"name": "get_time", "parameters": {"zone": 1}}'),
    "mistral": ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}',
                ', {"name": "get_time", "arguments": {"zone": 1}}'),
    "pythonic": ('[get_weather(city="Paris", unit="c")', ', get_time(zone=1)'),
    "deepseekv3": ("<｜tool▁calls▁begin｜>" + _DS.format(name="get_weather", args='{"city": "Paris", "unit": "c"}'),
                   "\n" + _DS.format(name="get_time", args='{"zone": 1}')),
}
CLOSE = {"mistral": "]", "pythonic": "]", "deepseekv3": "<｜tool▁calls▁end｜>"}


def script(parser: str, both: bool = False) -> str:
    first, second = SCRIPTS[parser]
    return first + (second if both else "") + CLOSE.get(parser, "")


def forced(text: str) -> dict[str, Any]:
    return {"ebnf": "root ::= " + json.dumps(text, ensure_ascii=False)}


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, ServerProc]]:
    srv = tool_server(request.param)
    try:
        yield request.param, srv
    finally:
        srv.stop()


def _stream(client: openai.OpenAI, **kwargs: Any) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """Content, calls and finish reason reassembled from the stream; checks the first delta of each call."""
    content: list[str] = []
    calls: list[dict[str, Any]] = []
    reason = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        reason = choice.finish_reason or reason
        if choice.delta.content:
            content.append(choice.delta.content)
        for d in choice.delta.tool_calls or []:
            if d.index == len(calls):  # a call's first delta: id, type and name
                assert d.id and d.type == "function" and d.function and d.function.name, d
                calls.append({"id": d.id, "name": d.function.name, "arguments": d.function.arguments or ""})
            else:
                assert d.id is None and d.function is not None and d.function.name is None, d
                calls[d.index]["arguments"] += d.function.arguments or ""
    return ("".join(content) or None), calls, reason


def test_tool_loop_call_result_answer(served: tuple[str, ServerProc]) -> None:
    parser, srv = served
    client = client_of(srv)
    first = client.chat.completions.create(model="m", messages=USER, tools=TOOLS, max_tokens=400,  # type: ignore
                                           extra_body=forced(script(parser)))
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == ARGS

    history = [*USER, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "21 C, sunny"}]
    answer = "It is 21 C and sunny in Paris."
    final = client.chat.completions.create(model="m", messages=history, tools=TOOLS, max_tokens=60,  # type: ignore
                                           extra_body=forced(answer))
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == answer and not final.choices[0].message.tool_calls
    # the assistant's call and the tool result went through the chat template: the prompt is exactly its rendering
    tok = Tokenizer.from_dir(ensure_demo_model())
    prompt = tok.apply_chat_template([*USER, {"role": "assistant", "content": "", "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}]}, history[2]],
        tools=TOOLS, chat_template=TEMPLATE.read_text())
    assert isinstance(prompt, str) and f'<tool_response id="{call.id}">21 C, sunny</tool_response>' in prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}' in prompt
    assert final.usage is not None and final.usage.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))


def test_parallel_calls_and_their_stream(served: tuple[str, ServerProc]) -> None:
    parser, srv = served
    client = client_of(srv)
    body: dict[str, Any] = {"model": "m", "messages": USER, "tools": TOOLS, "max_tokens": 500,
                            "extra_body": forced("Let me check. " * (parser in ("qwen25", "mistral", "deepseekv3"))
                                                 + script(parser, both=True))}
    resp = client.chat.completions.create(**body)
    message = resp.choices[0].message
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    assert calls == [("get_weather", ARGS), ("get_time", {"zone": 1})]
    assert resp.choices[0].finish_reason == "tool_calls"
    content, streamed, reason = _stream(client, **body)
    assert reason == "tool_calls" and content == message.content
    assert [(c["name"], c["arguments"]) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert len({c["id"] for c in streamed}) == 2
    # parallel_tool_calls=false keeps the first call only
    one = client.chat.completions.create(parallel_tool_calls=False, **body)
    assert [c.function.name for c in one.choices[0].message.tool_calls or []] == ["get_weather"]


def test_plain_text_stays_content_with_tools(served: tuple[str, ServerProc]) -> None:
    _, srv = served
    client = client_of(srv)
    text = "Paris is sunny (no tool needed)."
    resp = client.chat.completions.create(model="m", messages=USER, tools=TOOLS, max_tokens=60,  # type: ignore
                                          extra_body=forced(text))
    assert resp.choices[0].message.content == text and resp.choices[0].message.tool_calls is None
    assert resp.choices[0].finish_reason == "stop"
    content, calls, reason = _stream(client, model="m", messages=USER, tools=TOOLS, max_tokens=60,
                                     extra_body=forced(text))
    assert (content, calls, reason) == (text, [], "stop")
    # tool_choice none: no tools reach the template and nothing is parsed
    none = client.chat.completions.create(model="m", messages=USER, tools=TOOLS, tool_choice="none",  # type: ignore
                                          max_tokens=400, extra_body=forced(script(_)))
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content == script(_)


def _check_calls(message: Any, names: set[str]) -> None:
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_calls_on_random_weights_always_parse_and_validate(served: tuple[str, ServerProc],
                                                                  choice: Any) -> None:
    parser, srv = served
    client = client_of(srv)
    kwargs: dict[str, Any] = {"model": "m", "messages": USER, "tools": TOOLS, "tool_choice": choice,
                              "max_tokens": 300, "temperature": 1.0, "parallel_tool_calls": False}
    if parser == "pythonic":
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(**kwargs)
        assert err.value.body["param"] == "tool_choice"  # type: ignore[index]
        return
    names = {"get_weather", "get_time"} if choice == "required" else {"get_time"}
    resp = client.chat.completions.create(n=3, seed=5, **kwargs)
    for c in resp.choices:
        assert c.finish_reason == "tool_calls", c
        assert len(c.message.tool_calls or []) == 1
        _check_calls(c.message, names)
    content, calls, reason = _stream(client, seed=5, **kwargs)
    first = client.chat.completions.create(seed=5, **kwargs).choices[0].message
    assert reason == "tool_calls" and content == first.content
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in first.tool_calls or []]


@pytest.mark.parametrize("change, param, words", [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools.0.function.name", "required"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools.0.function.parameters", "type 'object'"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": 3}}}}]},
     "tools.0.function.parameters", "properties"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"required": "a"}}}]},
     "tools.0.function.parameters", "required"),
    ({"tool_choice": {"type": "function", "function": {"name": "absent"}}}, "tool_choice.function.name", "absent"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools", "twice"),
    ({"messages": [*USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": "{oops"}}]}]},
     "messages.1.tool_calls.0.function.arguments", "not valid JSON"),
])
def test_bad_tools_are_openai_400s_naming_the_field(served: tuple[str, ServerProc], change: dict[str, Any],
                                                   param: str, words: str) -> None:
    client = client_of(served[1])
    body: dict[str, Any] = {"model": "m", "messages": USER, "tools": TOOLS, "max_tokens": 4, **change}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**body)
    error = err.value.body
    assert isinstance(error, dict) and error["param"] == param and error["type"] == "invalid_request_error", error
    assert words in error["message"], error


def test_unknown_parser_stops_serve_with_one_line() -> None:
    from tests.api.conftest import start_server

    srv = start_server("--tool-call-parser", "nope", wait=False)
    try:
        assert srv.proc.wait(60) == 2
    finally:
        srv.stop()
    assert "--tool-call-parser: unknown tool-call parser 'nope'; known: deepseekv3, hermes, llama3" in srv.log()


def test_a_third_party_parser_registers_through_the_hook() -> None:
    from types import SimpleNamespace

    from sgl.api.tool_calls.base import FLAG, ToolCallParser
    from sgl.core.hooks import hookimpl
    from sgl.core.plugins import load_plugins
    from sgl.core.registry import select_class
    from sgl.plugins.tool_parsers.hermes import HermesParser

    class Tagged(HermesParser):
        marker = "<call>"

    hooks = SimpleNamespace(sgl_tool_call_parsers=hookimpl(lambda: {"tagged": Tagged}))
    plugins = load_plugins(extra={"tagged-plugin": hooks})
    parser = select_class(plugins.tool_call_parsers, "tagged", FLAG, ToolCallParser)()
    found = parser.scan('hi<call>{"name": "f", "arguments": {"a": 1}}', final=True)
    assert found.content == "hi" and [(c.name, c.arguments) for c in found.calls] == [("f", '{"a": 1}')]
