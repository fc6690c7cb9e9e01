"""Reasoning output: the thinking section of a reasoning model's text, split into ``reasoning_content``.

A parser (``sgl_reasoning_parsers``, chosen by ``--reasoning-parser``) says how the family marks the section. The
split of a prefix agrees with the split of the whole text (both parts only grow), so streaming sends the difference.
A constraint (tool grammar, response_format) applies only after the section: ``Thinking.constrain_after`` wraps it
in a structural tag whose first part is free text up to the end marker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sgl.api.tool_calls.base import Format, held_prefix
from sgl.core.sampling.params import CONSTRAINT_FIELDS

FLAG = "--reasoning-parser"


class ReasoningParser:
    """``start`` ... ``end`` around the thinking; ``in_prompt``: the chat template already wrote ``start``."""

    start: str = "<think>"
    end: str = "</think>"
    in_prompt: bool = False
    # template switches that turn thinking off when false (Qwen3's enable_thinking, DeepSeek's thinking)
    switches: tuple[str, ...] = ("enable_thinking", "thinking")

    def thinks(self, template_kwargs: dict[str, Any]) -> bool:
        return all(template_kwargs.get(s, True) is not False for s in self.switches)

    def split(self, text: str, final: bool) -> tuple[str, str]:
        """(reasoning, content) of ``text``; while streaming, a tail that may be a marker is held back."""
        body = text
        if not self.in_prompt:
            stripped = body.lstrip()
            if not stripped.startswith(self.start):
                if not final and self.start.startswith(stripped):
                    return "", ""
                return "", text
            body = stripped[len(self.start):]
        at = body.find(self.end)
        if at < 0:
            thought = body if final else body[: len(body) - held_prefix(body, self.end)]
            return _thought(thought, final), ""
        return _thought(body[:at], True), body[at + len(self.end):].lstrip("\n")

    def prefix_format(self) -> Format:
        """Free text up to (and including) the end of the thinking section."""
        begin = "" if self.in_prompt else self.start
        return {"type": "tag", "begin": begin, "content": {"type": "any_text"}, "end": self.end}


def _thought(text: str, closed: bool) -> str:
    # NOTE: newlines at either end are the format's, not the thought's (a trailing one may be followed by more text)
    return text.strip("\n")


def load_reasoning_parser(name: str | None) -> ReasoningParser | None:
    if name is None:
        return None
    from sgl.core.plugins import get_plugins
    from sgl.core.registry import select_class

    cls = select_class(get_plugins().reasoning_parsers, name, FLAG, ReasoningParser)
    return cls()  # type: ignore[no-any-return]


def _inner_format(sampling: dict[str, Any]) -> tuple[str, Format] | None:
    for field in CONSTRAINT_FIELDS:
        value = sampling.get(field)
        if value is None:
            continue
        if field == "json_schema":
            spec = json.loads(value) if isinstance(value, str) else value
            return field, {"type": "json_schema", "json_schema": spec, "max_whitespace_cnt": 1}
        if field == "regex":
            return field, {"type": "regex", "pattern": value}
        if field == "ebnf":
            return field, {"type": "grammar", "grammar": value}
        if field == "choices":
            return field, {"type": "or", "elements": [{"type": "const_string", "value": c} for c in value]}
        tag = json.loads(value) if isinstance(value, str) else value
        return field, tag.get("format", tag) if tag.get("type") == "structural_tag" else tag
    return None


@dataclass(frozen=True)
class Thinking:
    """A request's reasoning split: the parser, and whether the section is streamed as it grows."""

    parser: ReasoningParser
    stream: bool

    def constrain_after(self, sampling: dict[str, Any]) -> None:
        """Moves the request's constraint after the thinking section (a structural tag with a free prefix)."""
        found = _inner_format(sampling)
        if found is None:
            return
        field, inner = found
        del sampling[field]
        fmt = {"type": "sequence", "elements": [self.parser.prefix_format(), {"type": "const_string", "value": "\n\n"},
                                                 inner]}
        sampling["structural_tag"] = json.dumps({"type": "structural_tag", "format": fmt})
