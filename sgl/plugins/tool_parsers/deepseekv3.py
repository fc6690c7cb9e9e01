"""DeepSeek-V3: ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```
<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>`` (the markers are special tokens)."""

from __future__ import annotations

import json
import re

from sgl.api.tool_calls.base import CallDraft, Format, Function, json_value_end, one_of, repeated, schema, text
from sgl.plugins.tool_parsers.marker import MarkerParser

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
_CALL = re.compile(re.escape(CALL_BEGIN) + r"function" + re.escape(SEP) + r"([^\n]+)\n```json\n")


class DeepSeekV3Parser(MarkerParser):
    marker = CALLS_BEGIN
    needs_special_tokens = True

    def read_calls(self, text: str, start: int) -> list[CallDraft]:
        calls: list[CallDraft] = []
        pos = start
        while (m := _CALL.search(text, pos)) is not None:
            end = json_value_end(text, m.end())
            if end is None:
                calls.append(CallDraft(m.group(1), text[m.end():]))
                return calls
            arguments = text[m.end():end]
            try:
                json.loads(arguments)
                calls.append(CallDraft(m.group(1), arguments, complete=True))
            except json.JSONDecodeError:
                calls.append(CallDraft(m.group(1), arguments))
            pos = end
        return calls

    def structure(self, functions: list[Function], max_calls: int) -> Format:
        one = one_of([{"type": "sequence", "elements": [
            text(f"{CALL_BEGIN}function{SEP}{f.name}\n```json\n"), schema(f.parameters), text(f"\n```{CALL_END}")]}
            for f in functions])
        return {"type": "sequence", "elements": [text(CALLS_BEGIN), repeated(one, max_calls, "\n"), text(CALLS_END)]}
