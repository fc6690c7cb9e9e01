"""A plugin's own server arguments: a dataclass whose fields become ``--<plugin>-<field>`` options.

The plugin names the dataclass in its ``sgl_server_args`` hook; the CLI (``sgl/plugin_args.py``) turns each field
into an option in a help group of its own; the parsed instance travels in ``ServerArgs.plugin_args`` (keyed by
plugin name) to every process, and the plugin reads it back, typed, with ``plugin_args(server_args, MyArgs)``.
A light module (stdlib only): discovery checks a plugin's dataclass with it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs

A = TypeVar("A")

SCALARS: tuple[type, ...] = (bool, int, float, str)


class PluginOption(NamedTuple):
    """One field of a plugin's dataclass, as the CLI offers it."""

    field: str  # the dataclass field
    flag: str  # "--fixture-draft-depth"
    type: type  # one of SCALARS
    optional: bool  # None is a valid value (the field is ``T | None``)
    default: Any
    help: str  # the field's ``metadata["help"]``


def flag_prefix(plugin: str) -> str:
    """The plugin's option prefix: its name, lower case, ``_`` as ``-``."""
    return plugin.lower().replace("_", "-")


def _scalar(hint: Any) -> tuple[type, bool] | None:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2 and rest[0] in SCALARS:
            return rest[0], True
        return None
    return (hint, False) if hint in SCALARS else None


def plugin_options(plugin: str, cls: type) -> list[PluginOption]:
    """The options of ``cls``; TypeError naming the field when one has no default or a type the CLI cannot parse."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind = _scalar(hints[f.name])
        if kind is None:
            raise TypeError(
                f"field {cls.__name__}.{f.name} is {hints[f.name]!r}; options may be bool, int, float or str "
                "(or one of them | None)"
            )
        if f.default is dataclasses.MISSING:
            raise TypeError(f"field {cls.__name__}.{f.name} has no default (a plugin's options must all be optional)")
        flag = f"--{flag_prefix(plugin)}-{f.name.replace('_', '-')}"
        options.append(PluginOption(f.name, flag, kind[0], kind[1], f.default, f.metadata.get("help", "")))
    return options


def plugin_args(server_args: ServerArgs, cls: type[A]) -> A:
    """The plugin's parsed options: the ``cls`` instance in ``server_args.plugin_args``, else ``cls()`` (defaults)."""
    for value in server_args.plugin_args.values():
        if isinstance(value, cls):
            return value
    return cls()
