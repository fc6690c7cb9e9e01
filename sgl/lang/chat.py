"""Chat roles rendered client-side with the model's own jinja template, one role at a time.

A template renders a whole conversation, but a program appends one role at a time. Each role's text is therefore
cut out of renderings: the role's opening is what rendering one more message adds before its content, and its
closing is what follows the content. Rendering a sentinel as the content finds that split.
NOTE: the concatenation of the role texts equals the template's rendering of the messages so far, as long as the
template neither rewrites earlier turns nor transforms content (e.g. `| trim` on content with outer whitespace).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
_SENTINEL = "\x00SGL_CONTENT\x00"


class _GenerationTag(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (assistant-mask markers) and renders the body unchanged."""

    tags = {"generation"}  # noqa: RUF012 - jinja declares it as a plain class attribute

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ValueError(f"the server's chat template does not compile: {exc}") from exc


@dataclass(frozen=True)
class RoleText:
    """The text a role adds around its content."""

    begin: str
    end: str


@dataclass
class ChatTemplate:
    """A model's chat template plus the special tokens it refers to (bos_token, eos_token, ...)."""

    source: str
    special_tokens: Mapping[str, str] = field(default_factory=dict)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
        try:
            return _compile(self.source).render(
                messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                **dict(self.special_tokens))
        except jinja2.exceptions.TemplateError as exc:
            raise ValueError(f"chat template error: {exc}") from exc

    def role_text(self, messages: Sequence[Mapping[str, Any]], role: str) -> RoleText:
        """The opening and closing text of a new `role` message after `messages`.

        For the assistant the opening is the generation prompt, i.e. exactly what the model sees before it answers.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        before = self.render(messages) if messages else ""
        with_sentinel = self.render([*messages, {"role": role, "content": _SENTINEL}])
        head, sep, tail = with_sentinel.partition(_SENTINEL)
        if not sep:
            raise ValueError(f"the chat template drops the content of a {role} message")
        if role == "assistant":
            prompt = self.render(messages, add_generation_prompt=True)
            if len(prompt) > len(before):  # NOTE: a template without a generation prompt keeps the sentinel split
                head = prompt
        return RoleText(begin=_after(before, head), end=tail)

    def end_of_turn(self, messages: Sequence[Mapping[str, Any]]) -> str | None:
        """The text that ends an assistant turn (e.g. <|eot_id|>), which a gen inside assistant() stops at."""
        stop = self.role_text(messages, "assistant").end.strip()
        return stop or None


def _after(before: str, text: str) -> str:
    """`text` less its prefix `before`; a template that rewrites history keeps only what follows the common part."""
    if text.startswith(before):
        return text[len(before):]
    common = 0
    for a, b in zip(before, text):
        if a != b:
            break
        common += 1
    _warn_rewrite()
    return text[common:]


@lru_cache(maxsize=1)
def _warn_rewrite() -> None:
    logger.warning("the chat template rewrites earlier turns; role texts follow the newest rendering only")
