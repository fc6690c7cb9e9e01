"""Reading ``{"name": ..., "arguments": {...}}`` calls out of text, prefix by prefix (the JSON formats share it)."""

from __future__ import annotations

import json
import re

from sgl.api.tool_calls.base import CallDraft, json_value_end

_NAME = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")')


def _arguments_start(key: str) -> re.Pattern[str]:
    return re.compile(r'\s*,\s*"' + re.escape(key) + r'"\s*:\s*(?=[{\[])')


def read_json_calls(text: str, start: int = 0, arguments_key: str = "arguments") -> list[CallDraft]:
    """Every call object from ``start`` on; the last one may be a draft (name known, arguments still growing).

    NOTE: the name must come before the arguments, as every model family writes them (and the grammar forces).
    """
    args_re = _arguments_start(arguments_key)
    calls: list[CallDraft] = []
    pos = start
    while True:
        m = _NAME.search(text, pos)
        if m is None:
            return calls
        name = json.loads(m.group(1))
        a = args_re.match(text, m.end())
        if a is None:
            calls.append(CallDraft(name))  # the arguments may still be coming
            return calls
        begin = a.end()
        end = json_value_end(text, begin)
        if end is None:
            calls.append(CallDraft(name, text[begin:]))
            return calls
        arguments = text[begin:end]
        try:
            json.loads(arguments)
            valid = True
        except json.JSONDecodeError:
            valid = False
        calls.append(CallDraft(name, arguments, complete=valid))
        pos = end
