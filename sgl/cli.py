"""The `sgl` command line: one typer app, one function per command.

Commands import what they need inside their bodies so that `sgl --help` stays fast and never needs torch or the
server's dependencies. A command group (``serve``, ``bench``) is a typer app of its own, mounted here with
``app.add_typer``. A user error (unknown backend, broken plugin) is one line on stderr and exit code 2, never a
traceback.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, NamedTuple

import typer

from sgl.cli_args import CONTEXT_SETTINGS, Command, Group, with_server_args  # cheap: typer and ServerArgs only
from sgl.cli_errors import user_errors
from sgl.core.config import ServerArgs

if TYPE_CHECKING:
    from sgl.core.plugins import Plugins
    from sgl.core.registry import Registry

# NOTE: pretty tracebacks with locals would print ServerArgs (and an --api-key) on an unexpected error.
app = typer.Typer(
    name="sgl",
    cls=Group,
    help="sgl: an LLM serving engine whose hardware support is plugins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from sgl import __version__

        typer.echo(f"sgl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """sgl: an LLM serving engine whose hardware support is plugins."""


# ---------------------------------------------------------------------------------------------------------------
# sgl plugins


class PlatformRow(NamedTuple):
    name: str
    available: bool
    plugin: str
    how_to_get: str | None  # None when it is available here
    status: str  # active, available or unavailable
    why: str | None  # why it is unavailable here; None when it is available
    verified_on_hardware: bool  # whether its kernels have run on its own hardware in sgl's tests


def _distribution_of(plugins: Plugins, plugin: str) -> str:
    for info in plugins.infos:
        if info.name == plugin:
            return info.distribution
    return "?"


def _how_to_get(name: str, plugin: str, plugins: Plugins, extras: list[str]) -> str:
    if name in extras:
        return f"pip install 'sgl[{name}]' on a machine with its device"
    dist = _distribution_of(plugins, plugin)
    return f"needs its device and the requirements of {dist!r} (plugin {plugin!r})"


def _honest_status(plugins: Plugins, name: str) -> tuple[str | None, bool]:
    """(why it is unavailable or None, verified on hardware), never raising: a platform whose class cannot even be
    imported is unavailable for that reason."""
    from sgl.core.plugin_contract import one_line

    try:
        cls = plugins.platforms.get(name)
        verified = bool(getattr(cls, "verified_on_hardware", False))
        reason = getattr(cls, "unavailable_reason", None)
        why = reason() if callable(reason) else None
    except Exception as exc:  # noqa: BLE001 - probing must never take `sgl plugins` down
        return f"{type(exc).__name__}: {one_line(exc)}", False
    return why, verified


def _platform_rows(plugins: Plugins, active: str) -> list[PlatformRow]:
    from sgl.core.plugins import available_platforms, platform_extras

    extras = platform_extras()
    rows = []
    for name, ok in available_platforms(plugins).items():
        origin = plugins.platforms.origin(name)
        why, verified = _honest_status(plugins, name)
        status = "active" if name == active else "available" if ok else "unavailable"
        rows.append(PlatformRow(
            name, ok, origin, None if ok else _how_to_get(name, origin, plugins, extras), status,
            None if ok else why or "not available on this machine", verified,
        ))
    return rows


def _registry_rows(registry: Registry[Any]) -> list[dict[str, str]]:
    """One row per name: the plugin that registered it, and the one it replaced when it is an override."""
    rows = []
    for name in registry.names():
        row = {"name": name, "plugin": registry.origin(name)}
        replaced = registry.replaced(name)
        if replaced is not None:
            row["overrides"] = replaced
        rows.append(row)
    return rows


REGISTRY_SECTIONS: dict[str, str] = {
    "models": "Model architectures",
    "attention_backends": "Attention backends",
    "grammar_backends": "Grammar backends (--grammar-backend)",
    "quantization_methods": "Quantization methods (--quantization)",
    "speculative_algorithms": "Speculative algorithms (--speculative-algorithm)",
    "lora_backends": "LoRA backends (--lora-backend)",
}
"""The registries `sgl plugins` lists after the platforms: Plugins attribute -> section title."""


def plugins_report(backend: str | None = None) -> dict[str, Any]:
    """Everything `sgl plugins` shows, as plain data (the ``--json`` output)."""
    from sgl.core.plugin_options import plugin_options
    from sgl.core.plugins import get_plugins, select_platform

    plugins = get_plugins()
    active = select_platform(backend)
    return {
        "plugins": [dataclasses.asdict(info) for info in plugins.infos],
        "failed_plugins": [{**dataclasses.asdict(f.plugin), "error": f.error} for f in plugins.failures],
        "platforms": [row._asdict() for row in _platform_rows(plugins, active.name)],
        "active_platform": active.describe(),
        **{attr: _registry_rows(getattr(plugins, attr)) for attr in REGISTRY_SECTIONS},
        "server_args": [
            {"plugin": name, "options": [o.flag for o in plugin_options(name, plugins.server_args.get(name))]}
            for name in plugins.server_args.names()
        ],
    }


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns; rows may differ in length (an unavailable platform has a how-to-get column)."""
    if not rows:
        return [f"{indent}(none)"]
    ncols = max(len(r) for r in rows)
    padded = [r + [""] * (ncols - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in padded) for i in range(ncols)]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in padded]


def format_report(report: dict[str, Any]) -> str:
    lines = ["Plugins (entry point group sgl.plugins):"]
    lines += _table(
        [[p["name"], p["module"], f"{p['distribution']} {p['version']}"] for p in report["plugins"]]
    )
    if report["failed_plugins"]:
        lines += ["", "Plugins that failed to load (skipped):"]
        lines += _table([[f"{p['name']} ({p['distribution']} {p['version']})", p["error"]]
                         for p in report["failed_plugins"]])
    lines += ["", "Platforms:"]
    lines += _table(
        [
            [p["name"], p["status"], f"verified on hardware: {'yes' if p['verified_on_hardware'] else 'no'}",
             f"plugin {p['plugin']}"]
            + ([] if p["available"] else [f"({p['why']}) -> {p['how_to_get']}"])
            for p in report["platforms"]
        ]
    )
    active = report["active_platform"]
    caps = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in active["capabilities"].items())
    lines += [
        "",
        (
            f"Active platform: {active['name']} (device type {active['device_type']}, "
            f"dist backend {active['dist_backend']})"
        ),
        f"  capabilities: {caps}",
    ]
    for attr, title in REGISTRY_SECTIONS.items():
        lines += ["", f"{title}:"]
        lines += _table([
            [r["name"], f"plugin {r['plugin']}"] + ([f"(overrides {r['overrides']})"] if "overrides" in r else [])
            for r in report[attr]
        ])
    lines += ["", "Plugin server arguments (sgl serve --help):"]
    lines += _table([[a["plugin"], " ".join(a["options"])] for a in report["server_args"]])
    return "\n".join(lines)


@app.command("plugins", cls=Command)
def plugins_command(
    backend: str | None = typer.Option(
        None, "--backend", help="Platform to show as active (default: SGL_BACKEND, else the first available)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List discovered plugins (and those that failed to load), platforms (and which is active), and every registry."""
    with user_errors():
        report = plugins_report(backend)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


# ---------------------------------------------------------------------------------------------------------------
# sgl demo-model


@app.command("demo-model", cls=Command)
def demo_model_command(
    path: str = typer.Argument(..., help="Directory to write the model into."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights and the tokenizer's corpus."),
) -> None:
    """Write a tiny random Hugging Face-format model (config, weights, tokenizer) for tests and demos."""
    from sgl.core.demo_model import write_demo_model

    typer.echo(str(write_demo_model(path, seed=seed)))


# ---------------------------------------------------------------------------------------------------------------
# sgl bench (its module imports only typer and ServerArgs; each command imports the engine when it runs)

from sgl.bench.cli import bench_app

app.add_typer(bench_app, name="bench")


# ---------------------------------------------------------------------------------------------------------------
# sgl serve

from sgl.plugin_args import with_plugin_args  # noqa: E402  plugin discovery: hook modules and options dataclasses only

@app.command("serve", cls=Command, context_settings=CONTEXT_SETTINGS)
@with_server_args()
@with_plugin_args()
def serve_command(server_args: ServerArgs) -> None:
    """Serve a model over HTTP: OpenAI-compatible and SGLang-native routes (the demo model without --model-path)."""
    from sgl.api.server import serve  # NOTE: fastapi and uvicorn load only for this command
    from sgl.core import env
    from sgl.core.plugins import select_platform

    with user_errors():
        # NOTE: a named backend that cannot run here stops serve in seconds, with one line, before any process starts.
        if server_args.backend or env.BACKEND.get():
            select_platform(server_args.backend)  # NOTE: a Hub id that cannot be fetched stops serve before any process starts
        code = serve(server_args)
    if code:
        raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
