"""Generates typer options from ServerArgs' fields, so every command takes the same flags with the same help."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import typer

from sgl.core.config import ServerArgs

PANEL = "Server arguments"


def _base_type(annotation: Any) -> Any:
    hint = eval(annotation, vars(typing)) if isinstance(annotation, str) else annotation
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0]
    return hint


def server_args_parameters(exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per ServerArgs field: ``--model-path``, ``--tp-size``, ... (bools become flags)."""
    params = []
    for f in dataclasses.fields(ServerArgs):
        if f.name in exclude or f.metadata.get("cli") is False:  # NOTE: plugin_args has flags of its own
            continue
        kind = _base_type(f.type)
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            # NOTE: not in [brackets]: rich reads those as markup and the choices vanish from --help
            help_text += f" (one of {'|'.join(choices)})"
        option = typer.Option(f.default, flag, help=help_text, rich_help_panel=PANEL, show_default=True)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
    return params


def with_server_args(exclude: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorates a command ``fn(server_args: ServerArgs, **own_options)`` to take every ServerArgs flag."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for name, p in inspect.signature(fn).parameters.items() if name != "server_args"]
        extra = server_args_parameters(exclude)
        names = {p.name for p in extra}

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            sa = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            try:
                server_args = ServerArgs.from_kwargs(**sa)
            except ValueError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            return fn(server_args, **kwargs)

        wrapper.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        return wrapper

    return decorate
