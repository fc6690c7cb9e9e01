"""The tool-call parser contract: how one model family writes calls in its text, read back and enforced.

A parser reads a whole output (``scan``); streaming calls it again on each longer prefix, so a scan of a prefix must
agree with the scan of the full text: content only grows, a call's name appears once whole, and its ``arguments``
text only grows. ``structure`` is the same format as a structural tag (SGLang's ``structural_tag`` constraint), so the
grammar backend can force "one or more calls whose arguments validate against the parameters schema".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

Format = dict[str, Any]  # one node of a structural tag: {"type": "sequence" | "const_string" | "json_schema" | ...}
MAX_FORCED_CALLS = 4  # calls a required tool_choice may make with parallel_tool_calls (bounded: a random model won't end)


@dataclass(frozen=True)
class Function:
    """A tool the request offers: its name and the JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass
class CallDraft:
    """One call as far as the text shows it: ``name`` once written whole, ``arguments`` (JSON text) as it grows."""

    name: str | None
    arguments: str = ""
    complete: bool = False


@dataclass
class Scan:
    """What the text holds so far: plain content, then the calls."""

    content: str
    calls: list[CallDraft] = field(default_factory=list)


def held_prefix(text: str, marker: str) -> int:
    """How many trailing characters of ``text`` could be the start of ``marker`` (held back while streaming)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolCallParser(ABC):
    """One model family's tool-call text format. Stateless: one instance serves every request."""

    # True when the format's markers are special tokens the detokenizer would otherwise drop
    needs_special_tokens: bool = False

    @abstractmethod
    def scan(self, text: str, final: bool) -> Scan:
        """The content and calls in ``text``; ``final``: the output is whole (incomplete calls are dropped, and text
        with no complete call is all content)."""

    @abstractmethod
    def structure(self, functions: list[Function], max_calls: int) -> Format:
        """A structural-tag format whose every match is 1..``max_calls`` calls of ``functions`` in this format."""

    def finish(self, scan: Scan, text: str) -> Scan:
        """The final-scan rule every format shares: complete calls only; none at all means the text is content."""
        calls = [c for c in scan.calls if c.complete and c.name is not None]
        return Scan(scan.content, calls) if calls else Scan(text)


FLAG = "--tool-call-parser"


def load_tool_parser(name: str | None) -> ToolCallParser | None:
    """The parser ``name`` selects (registered through ``sgl_tool_call_parsers``); None when no name is given."""
    if name is None:
        return None
    from sgl.core.plugins import get_plugins
    from sgl.core.registry import select_class

    cls = select_class(get_plugins().tool_call_parsers, name, FLAG, ToolCallParser)
    return cls()  # type: ignore[no-any-return]


def json_value_end(text: str, start: int) -> int | None:
    """The index just past the JSON object or array starting at ``text[start]``; None while it is unfinished."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def one_of(formats: list[Format]) -> Format:
    return formats[0] if len(formats) == 1 else {"type": "or", "elements": formats}


def repeated(one: Format, max_calls: int, separator: str) -> Format:
    """``one`` then up to ``max_calls - 1`` more, each after ``separator``."""
    if max_calls <= 1:
        return one
    more = {"type": "sequence", "elements": [{"type": "const_string", "value": separator}, one]}
    return {"type": "sequence", "elements": [one, {"type": "repeat", "min": 0, "max": max_calls - 1,
                                                   "content": more}]}


def text(value: str) -> Format:
    return {"type": "const_string", "value": value}


def schema(value: dict[str, Any]) -> Format:
    # NOTE: at most one whitespace character in a row: a random-weight model cannot spend its budget on blanks
    return {"type": "json_schema", "json_schema": value, "max_whitespace_cnt": 1}


def call_object_schema(function: Function, arguments_key: str = "arguments") -> dict[str, Any]:
    """``{"name": <the name>, "<arguments_key>": <its parameters>}``, name first (the order the parsers read)."""
    return {"type": "object", "properties": {"name": {"const": function.name}, arguments_key: function.parameters},
            "required": ["name", arguments_key], "additionalProperties": False}
