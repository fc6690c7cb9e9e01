"""Plugin discovery and platform selection (the hook contract's checks are in ``sgl.core.plugin_contract``).

Discovery reads entry points of the group ``sgl.plugins`` and imports each named hook module; those modules must
be light (they return "module:attr" strings). A platform class is imported only to probe or use it.

NOTE: one broken plugin never stops the others. A plugin that fails to import, breaks the hook contract or clashes
with another plugin's names is logged, listed by ``sgl plugins`` and skipped as a whole; asking for a name it would
have provided (``--backend``, ``--quantization``, an architecture, ...) raises its failure, naming it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, NamedTuple

import pluggy

from sgl.core import env
from sgl.core.attention.registry import BUILTIN as BUILTIN_ATTENTION
from sgl.core.attention.registry import BUILTIN_ORIGIN
from sgl.core.hooks import ENTRY_POINT_GROUP, PROJECT, SglHookSpecs
from sgl.core.plugin_contract import (
    REGISTRY_HOOKS,
    SERVER_ARGS_HOOK,
    PluginContractError,
    Registration,
    call_hook,
    check_plugin_module,
    expected_signature,
    one_line,
    registrations,
    server_args_type,
)
from sgl.core.registry import Registry

if TYPE_CHECKING:
    from sgl.core.platform import Platform

# NOTE: the contract's error and checks are re-exported: plugin authors' tests import them from here.
__all__ = [
    "BackendError", "PluginContractError", "PluginFailure", "PluginInfo", "Plugins", "add_in_process_plugin",
    "available_platforms", "check_plugin_module", "expected_signature", "get_plugins", "load_plugins",
    "platform_extras", "remove_in_process_plugin", "reset_plugins", "select_platform",
]

logger = logging.getLogger(__name__)

IN_TREE_DISTRIBUTION = "sgl"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was skipped, and why (one line that names it)."""

    plugin: PluginInfo
    error: str


def _registry(kind: str) -> Any:
    return field(default_factory=lambda: Registry(kind))


@dataclass
class Plugins:
    """Everything the discovered plugins registered, and the plugins that were skipped."""

    infos: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)
    platforms: Registry[type[Platform]] = _registry("backend")
    models: Registry[type] = _registry("model architecture")
    attention_backends: Registry[Any] = _registry("attention backend")
    grammar_backends: Registry[type] = _registry("grammar backend")
    speculative_algorithms: Registry[type] = _registry("speculative algorithm")
    lora_backends: Registry[type] = _registry("LoRA backend")
    quantization_methods: Registry[type] = _registry("quantization method")
    tool_call_parsers: Registry[type] = _registry("tool-call parser")
    reasoning_parsers: Registry[type] = _registry("reasoning parser")
    server_args: Registry[type] = _registry("server arguments")  # plugin name -> its options dataclass
    manager: pluggy.PluginManager = field(default_factory=lambda: _new_manager())

    def registries(self) -> list[Registry[Any]]:
        return [getattr(self, attr) for attr, _ in REGISTRY_HOOKS.values()] + [self.server_args]


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(SglHookSpecs)
    return pm


class _Contribution(NamedTuple):
    info: PluginInfo
    module: object
    registrations: list[Registration]
    server_args: type | None


def _contribution(plugins: Plugins, info: PluginInfo, module: object, regs: list[Registration]) -> _Contribution:
    """Checks the module, registers it with pluggy and calls its registration hooks into ``regs`` (which keeps
    what was collected when a later hook breaks the contract); nothing is committed yet."""
    check_plugin_module(info.name, module)
    try:
        plugins.manager.register(module, name=info.name)
        plugins.manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginContractError(f"plugin {info.name!r}: {one_line(exc)}") from exc
    for hook in REGISTRY_HOOKS:
        regs += registrations(info.name, hook, call_hook(info.name, plugins.manager, module, hook))
    options = server_args_type(info.name, call_hook(info.name, plugins.manager, module, SERVER_ARGS_HOOK))
    return _Contribution(info, module, regs, options)


def _clash(plugins: Plugins, contribution: _Contribution, overridden: dict[tuple[str, str], str]) -> str | None:
    for reg in contribution.registrations:
        attr, kind = REGISTRY_HOOKS[reg.hook]
        registry: Registry[Any] = getattr(plugins, attr)
        if reg.override and (reg.hook, reg.name) in overridden:
            other = overridden[(reg.hook, reg.name)]
            return f"plugin {contribution.info.name!r} overrides {kind} {reg.name!r}, which {other!r} overrides too"
        if not reg.override and reg.name in registry:
            return (
                f"plugin {contribution.info.name!r} registers {kind} {reg.name!r}, which {registry.origin(reg.name)!r} "
                f"registers too; to replace it on purpose, register it as override({reg.target!r}) "
                "(from sgl.core.hooks import override)"
            )
    return None


def _skip(plugins: Plugins, info: PluginInfo, error: str, claims: list[Registration], complete: bool) -> None:
    """Records the failure; each name the plugin claimed raises it when asked for. When its claims may be
    incomplete (it failed before all its hooks ran), unknown-name errors of every registry mention it too."""
    plugins.failures.append(PluginFailure(info, error))
    logger.warning("plugin %r from %s skipped: %s", info.name, info.distribution, error)
    for reg in claims:
        getattr(plugins, REGISTRY_HOOKS[reg.hook][0]).fail(reg.name, error)
    if not complete:
        for registry in plugins.registries():
            registry.note(f"{info.name!r} ({info.distribution}): {error}")


def _unregister(plugins: Plugins, module: object) -> None:
    if plugins.manager.is_registered(module):
        plugins.manager.unregister(module)


def _entry_points() -> list[metadata.EntryPoint]:
    """In-tree plugins first, so a third party's clash with a built-in name is the third party's failure."""

    def key(ep: metadata.EntryPoint) -> tuple[bool, str]:
        return (ep.dist is None or ep.dist.name != IN_TREE_DISTRIBUTION, ep.name)

    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=key)


def load_plugins(extra: dict[str, object] | None = None) -> Plugins:
    """Discovers entry-point plugins (plus ``extra`` {name: module} given in-process) and checks their contracts.

    A plugin that fails is recorded in ``failures`` and skipped; the others load.
    """
    plugins = Plugins()
    for name, target in BUILTIN_ATTENTION.items():
        plugins.attention_backends.register(name, target, origin=BUILTIN_ORIGIN)
    sources: list[tuple[PluginInfo, object]] = []
    for ep in _entry_points():
        dist = ep.dist
        info = PluginInfo(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must say who it is, and stop nothing else
            error = f"plugin {ep.name!r} failed to import {ep.value!r}: {type(exc).__name__}: {one_line(exc)}"
            _skip(plugins, info, error, [], complete=False)
            continue
        sources.append((info, module))
    for name, module in (extra or {}).items():
        sources.append((PluginInfo(name, getattr(module, "__name__", repr(module)), "(in-process)", "-"), module))
    contributions = []
    for info, module in sources:
        claims: list[Registration] = []
        try:
            contributions.append(_contribution(plugins, info, module, claims))
        except PluginContractError as exc:
            _unregister(plugins, module)
            _skip(plugins, info, str(exc), claims, complete=False)
    overridden: dict[tuple[str, str], str] = {}
    queued: list[tuple[str, Registration]] = []
    for contribution in contributions:
        info = contribution.info
        clash = _clash(plugins, contribution, overridden)
        if clash is not None:
            _unregister(plugins, contribution.module)
            _skip(plugins, info, clash, contribution.registrations, complete=True)
            continue
        for reg in contribution.registrations:
            if reg.override:
                overridden[(reg.hook, reg.name)] = info.name
                queued.append((info.name, reg))
            else:
                getattr(plugins, REGISTRY_HOOKS[reg.hook][0]).register(reg.name, reg.target, origin=info.name)
        if contribution.server_args is not None:
            plugins.server_args.register(info.name, contribution.server_args, origin=info.name)
        plugins.infos.append(info)
    # NOTE: overrides apply after every plain registration, so they win whatever the plugins' order.
    for plugin, reg in queued:
        attr, kind = REGISTRY_HOOKS[reg.hook]
        registry: Registry[Any] = getattr(plugins, attr)
        registry.register(reg.name, reg.target, origin=plugin, replace=True)  # type: ignore[arg-type]
        logger.info("plugin %r overrides %s %r (was %s)", plugin, kind, reg.name, registry.replaced(reg.name))
    return plugins


_IN_PROCESS: dict[str, object] = {}


@functools.lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide plugin set, discovered once (entry points, then the in-process plugins)."""
    return load_plugins(extra=dict(_IN_PROCESS))


def add_in_process_plugin(name: str, module: object) -> None:
    """Adds a hook module to this process's plugin set as if an entry point named it (a benchmark's own speculative
    algorithm, a notebook's parser): it goes through the same contract checks and registries; the set is rediscovered
    on next use. Call it before building an Engine.

    NOTE: only this process sees it; ranks started as processes of their own (tp_size > 1) discover entry points only.
    """
    _IN_PROCESS[name] = module
    reset_plugins()


def remove_in_process_plugin(name: str) -> None:
    """Undoes ``add_in_process_plugin`` (a test's or a benchmark's cleanup)."""
    if _IN_PROCESS.pop(name, None) is not None:
        reset_plugins()


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
        try:
            return (getattr(plugins.platforms.get(name), "probe_priority", 100), name)
        except ImportError:
            return (100, name)  # NOTE: probing it fails too, and says why

    return sorted(plugins.platforms.names(), key=key)


def _backend_error(requested: str, plugins: Plugins) -> Exception:
    failure = plugins.platforms.failure(requested)
    if failure is not None:
        return PluginContractError(f"backend {requested!r} is unavailable: {failure}")
    avail = [n for n, ok in available_platforms(plugins).items() if ok]
    registered = plugins.platforms.names()
    why = "is not available on this machine" if requested in registered else "is unknown"
    if requested in registered:
        try:
            reason = plugins.platforms.get(requested).unavailable_reason()
        except Exception:  # noqa: BLE001 - the error being built must not itself fail
            reason = None
        why += f" ({reason})" if reason else ""
    hint = ""
    if requested in platform_extras():
        hint = f"; install it with: pip install 'sgl[{requested}]'"
    notes = plugins.platforms.notes
    failed = f"; plugins that failed to load: {'; '.join(notes)}" if notes and why == "is unknown" else ""
    return BackendError(
        f"backend {requested!r} {why}; available here: {', '.join(avail) or '(none)'}{hint}{failed}"
    )


def _platform_class(plugins: Plugins, name: str) -> type[Platform]:
    try:
        return plugins.platforms.get(name)
    except ImportError as exc:
        raise PluginContractError(str(exc)) from exc


@functools.lru_cache(maxsize=8)
def select_platform(backend: str | None = None) -> Platform:
    """The platform for ``--backend`` / ``SGL_BACKEND``, else the first available in probe order."""
    plugins = get_plugins()
    requested = backend or env.BACKEND.get()
    if requested:
        if requested not in plugins.platforms:
            raise _backend_error(requested, plugins)
        cls = _platform_class(plugins, requested)
        if not cls.is_available():
            raise _backend_error(requested, plugins)
        return cls()
    for name in _probe_order(plugins):
        try:
            cls = plugins.platforms.get(name)
            available = cls.is_available()
        except Exception:  # noqa: BLE001 - available_platforms logs it; probing goes on to the next one
            continue
        if available:
            return cls()
    raise BackendError("no backend is available; install one, e.g. pip install 'sgl' brings the cpu backend")
