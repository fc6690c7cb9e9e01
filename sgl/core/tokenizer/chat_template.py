"""Chat templates rendered the way Hugging Face renders them, so a model's prompt is the prompt it was trained on."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationTag(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (used for assistant masks) and renders its body as is."""

    tags = {"generation"}  # noqa: RUF012 - jinja declares it as a plain attribute

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None,
    separators: tuple[str, str] | None = None, sort_keys: bool = False,
) -> str:
    # NOTE: jinja's own tojson HTML-escapes and forces ASCII; templates expect plain json.dumps output.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    return _environment().from_string(template)


def select_chat_template(
    templates: Mapping[str, str], name_or_template: str | None = None, *, has_tools: bool = False
) -> str:
    """Picks the template to render: an explicit name or template text, else `tool_use` with tools, else `default`."""
    if name_or_template is not None:
        return templates.get(name_or_template, name_or_template)
    if not templates:
        raise ValueError(
            "This model has no chat template; pass one explicitly or use a model whose tokenizer_config.json "
            "(or chat_template.jinja) defines one."
        )
    if has_tools and "tool_use" in templates:
        return templates["tool_use"]
    if "default" in templates:
        return templates["default"]
    raise ValueError(f"This model has several chat templates and none is named 'default': {sorted(templates)}")


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    **template_kwargs: Any,
) -> str:
    """Renders `messages`; a template that fails (syntax, raise_exception, bad input) raises ValueError."""
    if documents is not None and any(not isinstance(d, Mapping) for d in documents):
        raise ValueError("documents must be a list of dicts (with 'title' and 'text' keys)")
    variables: dict[str, Any] = dict(special_tokens or {})
    variables.update(template_kwargs)  # caller's kwargs win over special tokens, as in transformers
    try:
        return _compile(template).render(
            messages=[dict(m) for m in messages],
            tools=None if tools is None else [dict(t) for t in tools],
            documents=None if documents is None else [dict(d) for d in documents],
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.exceptions.TemplateError as exc:
        raise ValueError(f"chat template error: {exc.message or exc}") from exc
    except (TypeError, AttributeError, KeyError, IndexError) as exc:  # e.g. content of an unexpected type
        raise ValueError(f"chat template error: {type(exc).__name__}: {exc}") from exc
