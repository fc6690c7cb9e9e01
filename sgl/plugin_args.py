"""The options that plugins add to ``sgl serve`` through ``sgl_server_args``: one help group per plugin.

Each field of a plugin's options dataclass becomes ``--<plugin>-<field>`` (``sgl.core.plugin_options``); the values
are folded into one instance of that dataclass, stored in ``ServerArgs.plugin_args[plugin]``, where the plugin reads
it back typed. Discovery runs when the command is built: it imports the plugins' hook modules and their options
dataclasses, nothing heavy. A plugin whose flag would clash with another flag is logged and left out.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import typer

from sgl.core.config import ServerArgs
from sgl.core.plugin_options import PluginOption, plugin_options

logger = logging.getLogger(__name__)


class _Group(NamedTuple):
    plugin: str
    panel: str  # the --help group: "Plugin fixture (sgl-fixture-plugin 0.0.1)"
    cls: type
    options: list[tuple[str, PluginOption]]  # (python parameter name, option)


def _server_flags() -> set[str]:
    return {"--" + f.name.replace("_", "-") for f in dataclasses.fields(ServerArgs)}


def plugin_groups() -> list[_Group]:
    """Every loaded plugin's options, in plugin order; a plugin with a clashing flag is left out (and logged)."""
    from sgl.core.plugins import get_plugins

    plugins = get_plugins()
    infos = {info.name: info for info in plugins.infos}
    taken = _server_flags()
    groups = []
    for plugin in plugins.server_args.names():
        cls = plugins.server_args.get(plugin)
        options = plugin_options(plugin, cls)
        clashes = sorted({o.flag for o in options} & taken)
        if clashes:
            logger.warning("plugin %r: its option(s) %s clash with other flags; they are left out", plugin,
                           ", ".join(clashes))
            continue
        taken |= {o.flag for o in options}
        info = infos[plugin]
        panel = f"Plugin {plugin} ({info.distribution} {info.version})"
        ident = re.sub(r"\W", "_", plugin)
        groups.append(_Group(plugin, panel, cls, [(f"plugin__{ident}__{o.field}", o) for o in options]))
    return groups


def _parameter(param: str, option: PluginOption, panel: str) -> inspect.Parameter:
    # NOTE: a bool option takes its --no- form too, so a default of True (or None: the plugin decides) can be turned off
    flags = f"{option.flag}/--no-{option.flag[2:]}" if option.type is bool else option.flag
    default = typer.Option(option.default, flags, help=option.help, rich_help_panel=panel, show_default=True)
    return inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=option.type)


def with_plugin_args() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorates ``fn(server_args: ServerArgs)`` to take every plugin's options and pass them on in
    ``server_args.plugin_args``. Goes under ``with_server_args()``, which builds the ServerArgs."""
    groups = plugin_groups()

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(server_args: ServerArgs, **kwargs: Any) -> Any:
            parsed = dict(server_args.plugin_args)
            for group in groups:
                values = {o.field: kwargs.pop(param) for param, o in group.options}
                try:
                    parsed[group.plugin] = group.cls(**values)
                except (TypeError, ValueError) as exc:  # the dataclass's own validation
                    typer.echo(f"error: plugin {group.plugin!r} options: {exc}", err=True)
                    raise typer.Exit(2) from None
            return fn(server_args.replace(plugin_args=parsed), **kwargs)

        own = list(inspect.signature(fn).parameters.values())
        extra = [_parameter(param, o, g.panel) for g in groups for param, o in g.options]
        wrapper.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def plugin_argv(plugin_args: dict[str, Any] | Any) -> list[str]:
    """The ``sgl serve`` flags that reproduce ``plugin_args`` (values that differ from the defaults)."""
    argv: list[str] = []
    for plugin, value in plugin_args.items():
        for option in plugin_options(plugin, type(value)):
            got = getattr(value, option.field)
            if got == option.default or got is None:
                continue
            if isinstance(got, bool):
                argv.append(option.flag if got else "--no-" + option.flag[2:])
            else:
                argv += [option.flag, str(got)]
    return argv
