"""Plugin discovery, contract checks, and platform selection.

Discovery reads entry points of the group ``sgl.plugins`` and imports each named hook module; those modules must
be light (they return "module:attr" strings). A platform class is imported only to probe or use it.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING

import pluggy

from sgl.core import env
from sgl.core.hooks import ENTRY_POINT_GROUP, HOOK_NAMES, PROJECT, SglHookSpecs
from sgl.core.registry import Registry

if TYPE_CHECKING:
    from sgl.core.platform import Platform

logger = logging.getLogger(__name__)


class PluginContractError(Exception):
    """A plugin broke the hook contract; the message names the plugin, the hook and what was expected."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str


@dataclass
class Plugins:
    """Everything the discovered plugins registered."""

    infos: list[PluginInfo] = field(default_factory=list)
    platforms: Registry[type[Platform]] = field(default_factory=lambda: Registry("backend"))
    models: Registry[type] = field(default_factory=lambda: Registry("model architecture"))
    attention_backends: Registry[object] = field(default_factory=lambda: Registry("attention backend"))
    grammar_backends: Registry[type] = field(default_factory=lambda: Registry("grammar backend"))
    manager: pluggy.PluginManager = field(default_factory=lambda: _new_manager())


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(SglHookSpecs)
    return pm


def expected_signature(hook: str) -> str:
    spec = getattr(SglHookSpecs, hook)
    sig = inspect.signature(spec)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    return f"{hook}{sig.replace(parameters=params)}"


def check_plugin_module(plugin: str, module: ModuleType | object) -> None:
    """Raises PluginContractError for a hook implementation with an unknown name or arguments."""
    marker = f"{PROJECT}_impl"
    for attr in dir(module):
        obj = getattr(module, attr, None)
        if not callable(obj) or getattr(obj, marker, None) is None:
            continue
        if attr not in HOOK_NAMES:
            close = difflib.get_close_matches(attr, HOOK_NAMES, n=1)
            hint = f"; did you mean {expected_signature(close[0])}?" if close else ""
            known = ", ".join(HOOK_NAMES)
            raise PluginContractError(
                f"plugin {plugin!r} implements unknown hook {attr!r}{hint} (known hooks: {known})"
            )
        spec_args = set(inspect.signature(getattr(SglHookSpecs, attr)).parameters) - {"self"}
        impl_args = set(inspect.signature(obj).parameters) - {"self"}
        if not impl_args <= spec_args:
            raise PluginContractError(
                f"plugin {plugin!r} hook {attr!r} takes {sorted(impl_args)}; expected {expected_signature(attr)}"
            )


def _collect(plugins: Plugins, hook: str, registry: Registry) -> None:  # type: ignore[type-arg]
    caller = getattr(plugins.manager.hook, hook)
    for impl in caller.get_hookimpls():
        plugin = plugins.manager.get_name(impl.plugin) or repr(impl.plugin)
        result = impl.function()
        if result is None:
            continue
        if not isinstance(result, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, type)) for k, v in result.items()
        ):
            raise PluginContractError(
                f"plugin {plugin!r} hook {hook!r} returned {type(result).__name__}; expected "
                f"{expected_signature(hook)} mapping names to 'module:attr' strings"
            )
        for name, target in result.items():
            if isinstance(target, str) and ":" not in target:
                raise PluginContractError(
                    f"plugin {plugin!r} hook {hook!r} registered {name!r} as {target!r}; expected 'module:attr'"
                )
            registry.register(name, target, origin=plugin)


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def load_plugins(extra: dict[str, object] | None = None) -> Plugins:
    """Discovers entry-point plugins (plus ``extra`` {name: module} given in-process) and checks their contracts."""
    plugins = Plugins()
    sources: list[tuple[PluginInfo, object]] = []
    for ep in _entry_points():
        dist = ep.dist
        info = PluginInfo(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must say who it is
            raise PluginContractError(f"plugin {ep.name!r} ({info.distribution}) failed to import: {exc}") from exc
        sources.append((info, module))
    for name, module in (extra or {}).items():
        sources.append((PluginInfo(name, getattr(module, "__name__", repr(module)), "(in-process)", "-"), module))
    for info, module in sources:
        check_plugin_module(info.name, module)
        plugins.manager.register(module, name=info.name)
        plugins.infos.append(info)
    plugins.manager.check_pending()
    _collect(plugins, "sgl_platforms", plugins.platforms)
    _collect(plugins, "sgl_models", plugins.models)
    _collect(plugins, "sgl_attention_backends", plugins.attention_backends)
    _collect(plugins, "sgl_grammar_backends", plugins.grammar_backends)
    return plugins


@functools.lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide plugin set, discovered once."""
    return load_plugins()


def reset_plugins() -> None:
    get_plugins.cache_clear()
    select_platform.cache_clear()


def platform_extras() -> list[str]:
    """Extras of the sgl distribution that install a platform's dependencies (for error messages)."""
    try:
        extras = metadata.metadata("sgl").get_all("Provides-Extra") or []
    except metadata.PackageNotFoundError:
        return []
    return [e for e in extras if e not in ("test", "serve", "grammar")]


class BackendError(ValueError):
    """The requested backend is unknown or unavailable here."""


def available_platforms(plugins: Plugins | None = None) -> dict[str, bool]:
    plugins = plugins or get_plugins()
    result: dict[str, bool] = {}
    for name in plugins.platforms.names():
        try:
            result[name] = bool(plugins.platforms.get(name).is_available())
        except Exception as exc:  # probing must never take the process down
            logger.warning("backend %r could not be probed: %s", name, exc)
            result[name] = False
    return result


def _probe_order(plugins: Plugins) -> list[str]:
    def key(name: str) -> tuple[int, str]:
        return (getattr(plugins.platforms.get(name), "probe_priority", 100), name)

    return sorted(plugins.platforms.names(), key=key)


def _backend_error(requested: str, plugins: Plugins) -> BackendError:
    avail = [n for n, ok in available_platforms(plugins).items() if ok]
    registered = plugins.platforms.names()
    why = "is not available on this machine" if requested in registered else "is unknown"
    hint = ""
    if requested in platform_extras():
        hint = f"; install it with: pip install 'sgl[{requested}]'"
    return BackendError(
        f"backend {requested!r} {why}; available here: {', '.join(avail) or '(none)'}{hint}"
    )


@functools.lru_cache(maxsize=8)
def select_platform(backend: str | None = None) -> Platform:
    """The platform for ``--backend`` / ``SGL_BACKEND``, else the first available in probe order."""
    plugins = get_plugins()
    requested = backend or env.BACKEND.get()
    if requested:
        if requested not in plugins.platforms:
            raise _backend_error(requested, plugins)
        cls = plugins.platforms.get(requested)
        if not cls.is_available():
            raise _backend_error(requested, plugins)
        return cls()
    for name in _probe_order(plugins):
        cls = plugins.platforms.get(name)
        if cls.is_available():
            return cls()
    raise BackendError("no backend is available; install one, e.g. pip install 'sgl' brings the cpu backend")
