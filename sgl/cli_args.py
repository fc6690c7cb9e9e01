"""Generates typer options from ServerArgs' fields and from SGLang's flags that are not fields, so every command that
builds an engine takes the same flags with the same help, and a launch script copied from SGLang parses.

Also the command classes every ``sgl`` command uses, which keep ``--help`` readable: help text is shown as written
(rich would read ``[len * ratio, len]`` as markup and drop it), and flags show no ``<bool>`` type.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from sgl.core.config import ServerArgs
from sgl.core.sglang_flags import SGLANG_FLAGS

PANEL = "Server arguments"
SGLANG_PANEL = "SGLang flags: accepted where sgl already does what they ask, otherwise refused at startup"
# NOTE: SGLang's list-valued flags (--lora-paths a=x b=y) leave their later values as extra arguments; the command
# allows them and hands them to the one list-valued flag given (``_attach_list_values``).
CONTEXT_SETTINGS = {"allow_extra_args": True}


try:
    from rich.markup import escape
except ImportError:  # pragma: no cover - without rich, typer prints help as plain text: nothing to escape

    def escape(markup: str) -> str:
        return markup


def _readable(params: Iterable[Any]) -> None:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # NOTE: rich help would print "<bool>" beside every flag


class Command(TyperCommand):
    """A typer command whose help prints parameter help verbatim and no type beside a flag."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if getattr(param, "help", None):
                param.help = escape(param.help)  # type: ignore[attr-defined]

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _readable(params)
        return params


class Group(TyperGroup):
    """A typer group whose own options (--help, --version) show no ``<bool>``."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _readable(params)
        return params


def _base_type(annotation: Any) -> Any:
    hint = eval(annotation, vars(typing)) if isinstance(annotation, str) else annotation
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0]
    return hint


def _parameter(
    name: str, kind: Any, default: Any, help_text: str, panel: str, aliases: Iterable[str], taken: set[str]
) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    others = [a for a in aliases if a not in taken]  # NOTE: a command's own option keeps its name (bench's --model)
    option = typer.Option(default, flag, *others, help=help_text, rich_help_panel=panel, show_default=True)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)


def _flags_of(params: Iterable[inspect.Parameter]) -> set[str]:
    return {d for p in params if isinstance(p.default, typer.models.ParameterInfo) for d in p.default.param_decls or ()}


def server_args_parameters(exclude: tuple[str, ...] = (), taken: Iterable[str] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per ServerArgs field: ``--model-path``, ``--page-size``, ... (bools become flags).

    ``taken``: flags the command already has; a field's alias among them is left out."""
    params = []
    for f in dataclasses.fields(ServerArgs):
        if f.name in exclude or f.metadata.get("cli") is False:  # NOTE: plugin_args has flags of its own
            continue
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            help_text += f" (one of {'|'.join(choices)})"
        aliases = f.metadata.get("aliases", ())
        params.append(_parameter(f.name, _base_type(f.type), f.default, help_text, PANEL, aliases, set(taken)))
    return params


def sglang_flag_parameters(taken: Iterable[str]) -> list[inspect.Parameter]:
    """One keyword parameter per SGLang flag of the table whose name no field, plugin or command has taken.

    ``taken``: parameter names and flags already in use."""
    taken = set(taken)
    return [
        _parameter(f.name, f.type, f.default, f.help, SGLANG_PANEL, f.aliases, taken)
        for f in SGLANG_FLAGS.values()
        if f.name not in taken and f.flag not in taken
    ]


def _list_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(ServerArgs) if typing.get_origin(_base_type(f.type)) is list]


def _attach_list_values(sa: dict[str, Any], extra: list[str]) -> list[str]:
    """SGLang's ``--lora-paths a=x b=y``: click keeps ``a=x`` for the flag and leaves ``b=y`` over. When exactly one
    list-valued flag was given, the leftover values are its own; returns what is still unexplained."""
    given = [n for n in _list_fields() if sa.get(n)]
    values = [a for a in extra if not a.startswith("-")]
    if len(given) != 1 or not values:
        return extra
    sa[given[0]] = [*sa[given[0]], *values]
    return [a for a in extra if a.startswith("-")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def with_server_args(exclude: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorates a command ``fn(server_args: ServerArgs, **own_options)`` to take every ServerArgs flag and SGLang's
    other flags; a refused flag or a bad value is one line on stderr and exit code 2."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for name, p in inspect.signature(fn).parameters.items() if name != "server_args"]
        fields = server_args_parameters(exclude, _flags_of(own))
        taken = {f.name for f in dataclasses.fields(ServerArgs)} | {p.name for p in own} | _flags_of(own + fields)
        sglang = sglang_flag_parameters(taken)
        field_names = {p.name for p in fields}
        defaults = {p.name: p.default.default for p in sglang}

        @functools.wraps(fn)
        def wrapper(ctx: typer.Context, **kwargs: Any) -> Any:
            sa = {k: kwargs.pop(k) for k in list(kwargs) if k in field_names}
            for name, accepted in defaults.items():
                value = kwargs.pop(name)
                if value != accepted:  # NOTE: the value that matches sgl changes nothing; others go to the check
                    sa[name] = value
            extra = _attach_list_values(sa, list(ctx.args))
            try:
                server_args = ServerArgs.from_kwargs(**sa)
            except ValueError as exc:
                raise _fail(str(exc)) from None
            if extra:
                raise _fail(f"unexpected argument(s): {' '.join(extra)}")
            return fn(server_args, **kwargs)

        context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        wrapper.__signature__ = inspect.Signature([context, *own, *fields, *sglang])  # type: ignore[attr-defined]
        return wrapper

    return decorate
