"""Each parser read prefix by prefix agrees with its read of the whole text (what streaming relies on), and the
grammar it builds for a forced call accepts exactly its own format."""

from __future__ import annotations

import json

import pytest

from sgl.api.tool_calls.base import Function, load_tool_parser
from sgl.api.tool_calls.request import ToolPlan
from sgl.api.tool_calls.stream import ToolStream
from tests.tools.test_tool_calls import SCRIPTS, TIME, WEATHER, script


@pytest.mark.parametrize("parser", sorted(SCRIPTS))
def test_every_prefix_agrees_with_the_whole(parser: str) -> None:
    p = load_tool_parser(parser)
    assert p is not None
    text = "Let me check. " * (parser in ("qwen25", "mistral", "deepseekv3")) + script(parser, both=True)
    whole = p.scan(text, final=True)
    assert [(c.name, json.loads(c.arguments)) for c in whole.calls] == [
        ("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {"zone": 1})]
    stream = ToolStream(ToolPlan(p, parallel=True))
    deltas = [d for i in range(len(text)) for d in stream.deltas(text[:i], final=False)]
    deltas += stream.deltas(text, final=True)
    content = "".join(d.get("content", "") for d in deltas)
    calls: list[list[str]] = []
    for d in deltas:
        for c in d.get("tool_calls", []):
            if "id" in c:
                calls.append([c["function"]["name"], ""])
            else:
                calls[c["index"]][1] += c["function"]["arguments"]
    assert content == whole.content
    assert calls == [[c.name, c.arguments] for c in whole.calls]


@pytest.mark.parametrize("parser", sorted(set(SCRIPTS) - {"pythonic"}))
def test_forced_call_grammar_accepts_the_format_and_nothing_else(parser: str) -> None:
    xgr = pytest.importorskip("xgrammar")
    from sgl.plugins.grammar.xgrammar_backend import structural_tag

    p = load_tool_parser(parser)
    assert p is not None
    fmt = p.structure([Function("get_weather", WEATHER), Function("get_time", TIME)], max_calls=2)
    grammar = xgr.Grammar.from_structural_tag(structural_tag(fmt))

    def matches(text: str) -> bool:
        return bool(xgr.testing._is_grammar_accept_string(grammar, text))

    compact = script(parser, both=True).replace(": ", ":").replace(", ", ",")  # the grammar's JSON is compact
    assert matches(compact), compact
    assert not matches(compact.replace('"c"', '"kelvin"'))  # an argument outside its enum
    assert not matches(compact.replace("get_time", "get_date"))  # a function not offered
    assert not matches("Sure!")  # a forced call is a call
