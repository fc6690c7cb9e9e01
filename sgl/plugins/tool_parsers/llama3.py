"""Llama 3.x JSON tool calls: ``{"name": ..., "parameters": {...}}`` as the whole output, ``;`` between calls.

The optional ``<|python_tag|>`` marker is a special token the detokenizer drops; the output opening with a JSON
object is what marks a call (text that holds no complete call stays content).
"""

from __future__ import annotations

from sgl.api.tool_calls.base import Format, Function, Scan, ToolCallParser, call_object_schema, one_of, repeated, \
    schema
from sgl.api.tool_calls.json_calls import read_json_calls

PYTHON_TAG = "<|python_tag|>"


class Llama3Parser(ToolCallParser):
    def scan(self, text: str, final: bool) -> Scan:
        body = text.split(PYTHON_TAG, 1)[1] if PYTHON_TAG in text else text
        stripped = body.lstrip()
        if not stripped:
            return Scan(text if final else "")
        if not stripped.startswith("{"):
            return Scan(text)
        found = Scan("", read_json_calls(body, 0, arguments_key="parameters"))
        return self.finish(found, text) if final else found

    def structure(self, functions: list[Function], max_calls: int) -> Format:
        one = one_of([schema(call_object_schema(f, "parameters")) for f in functions])
        return repeated(one, max_calls, "; ")
