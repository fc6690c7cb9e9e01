"""Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`` (the marker is a special token)."""

from __future__ import annotations

from sgl.api.tool_calls.base import CallDraft, Format, Function, call_object_schema, schema, text
from sgl.api.tool_calls.json_calls import read_json_calls
from sgl.plugins.tool_parsers.marker import MarkerParser


class MistralParser(MarkerParser):
    marker = "[TOOL_CALLS]"
    needs_special_tokens = True

    def read_calls(self, text: str, start: int) -> list[CallDraft]:
        return read_json_calls(text, start)

    def structure(self, functions: list[Function], max_calls: int) -> Format:
        items = [call_object_schema(f) for f in functions]
        array = {"type": "array", "items": items[0] if len(items) == 1 else {"anyOf": items}, "minItems": 1,
                 "maxItems": max_calls}
        return {"type": "sequence", "elements": [text(self.marker + " "), schema(array)]}
