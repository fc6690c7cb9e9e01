"""Pythonic tool calls (Llama 3.2/4, ...): ``[get_weather(city="Paris"), get_time()]``, read with ``ast``.

The list is read once whole (a Python call has no argument prefix that is valid JSON), so streaming sends each
call with its arguments at the end.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from sgl.api.tool_calls.base import CallDraft, Format, Function, Scan, ToolCallParser


def _value(node: ast.expr) -> Any:
    return ast.literal_eval(node)


def _calls(source: str) -> list[CallDraft] | None:
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.List) or not tree.elts:
        return None
    calls = []
    for node in tree.elts:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args):
            return None
        try:
            args = {kw.arg: _value(kw.value) for kw in node.keywords if kw.arg is not None}
        except (ValueError, SyntaxError):
            return None
        calls.append(CallDraft(node.func.id, json.dumps(args, ensure_ascii=False), complete=True))
    return calls


class PythonicParser(ToolCallParser):
    def scan(self, text: str, final: bool) -> Scan:
        if not text.lstrip().startswith("["):
            return Scan(text if (final or text.strip()) else "")
        if not final:
            return Scan("")
        calls = _calls(text)
        return Scan("", calls) if calls else Scan(text)

    def structure(self, functions: list[Function], max_calls: int) -> Format:
        raise ValueError("tool_choice 'required' or a named function is not supported with --tool-call-parser "
                         "pythonic (its Python arguments cannot be constrained to a JSON schema)")
