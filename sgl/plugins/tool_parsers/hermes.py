"""Hermes / Qwen2.5 / Qwen3: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, one block per call."""

from __future__ import annotations

from sgl.api.tool_calls.base import CallDraft, Format, Function, call_object_schema, one_of, repeated, schema, text
from sgl.api.tool_calls.json_calls import read_json_calls
from sgl.plugins.tool_parsers.marker import MarkerParser

BEGIN, END = "<tool_call>\n", "\n</tool_call>"


class HermesParser(MarkerParser):
    marker = "<tool_call>"

    def read_calls(self, text: str, start: int) -> list[CallDraft]:
        return read_json_calls(text, start)

    def structure(self, functions: list[Function], max_calls: int) -> Format:
        one = one_of([{"type": "sequence", "elements": [text(BEGIN), schema(call_object_schema(f)), text(END)]}
                      for f in functions])
        return repeated(one, max_calls, "\n")
