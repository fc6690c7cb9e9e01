"""Plugin discovery, contract checks, and platform selection.

Discovery reads entry points of the group ``sgl.plugins`` and imports each named hook module; those modules must
be light (they return "module:attr" strings). A platform class is imported only to probe or use it.

NOTE: one broken plugin never stops the others. A plugin that fails to import, breaks the hook contract or clashes
with another plugin's names is logged, listed by ``sgl plugins`` and skipped as a whole; asking for a name it would
have provided (``--backend``, ``--quantization``, an architecture, ...) raises its failure, naming it.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import pluggy

from sgl.core import env
from sgl.core.attention.registry import BUILTIN as BUILTIN_ATTENTION
from sgl.core.attention.registry import BUILTIN_ORIGIN
from sgl.core.hooks import ENTRY_POINT_GROUP, HOOK_NAMES, PROJECT, Override, SglHookSpecs
from sgl.core.plugin_options import plugin_options
from sgl.core.registry import Registry, resolve

if TYPE_CHECKING:
    from sgl.core.platform import Platform

logger = logging.getLogger(__name__)

IN_TREE_DISTRIBUTION = "sgl"

REGISTRY_HOOKS: dict[str, tuple[str, str]] = {
    "sgl_platforms": ("platforms", "backend"),
    "sgl_models": ("models", "model architecture"),
    "sgl_attention_backends": ("attention_backends", "attention backend"),
    "sgl_grammar_backends": ("grammar_backends", "grammar backend"),
    "sgl_speculative_algorithms": ("speculative_algorithms", "speculative algorithm"),
    "sgl_lora_backends": ("lora_backends", "LoRA backend"),
    "sgl_quantization_methods": ("quantization_methods", "quantization method"),
}
"""Each hook that returns ``{name: "module:attr"}``: the Plugins registry it fills, and what an entry is called."""

SERVER_ARGS_HOOK = "sgl_server_args"


class PluginContractError(Exception):
    """A plugin broke the hook contract; the message names the plugin, the hook and what was expected."""


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
    server_args: Registry[type] = _registry("server arguments")  # plugin name -> its options dataclass
    manager: pluggy.PluginManager = field(default_factory=lambda: _new_manager())

    def registries(self) -> list[Registry[Any]]:
        return [getattr(self, attr) for attr, _ in REGISTRY_HOOKS.values()] + [self.server_args]


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(SglHookSpecs)
    return pm


def expected_signature(hook: str) -> str:
    """``sgl_startup_check(server_args: ServerArgs) -> None``, as a plugin author would write it."""
    sig = inspect.signature(getattr(SglHookSpecs, hook))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values() if p.name != "self")
    returns = "dict[str, str]" if hook in REGISTRY_HOOKS else sig.return_annotation
    return f"{hook}({params}) -> {returns}"


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, HOOK_NAMES, n=1)
    return f"; did you mean {expected_signature(close[0])}?" if close else ""


def check_plugin_module(plugin: str, module: ModuleType | object) -> None:
    """Raises PluginContractError for a hook implementation with an unknown name or arguments, and for a function
    named like a hook (``sgl_*``) that lacks ``@hookimpl`` (pluggy would ignore it without a word)."""
    marker = f"{PROJECT}_impl"
    for attr in dir(module):
        obj = getattr(module, attr, None)
        if not callable(obj):
            continue
        if getattr(obj, marker, None) is None:
            if attr.startswith("sgl_"):
                hint = "" if attr in HOOK_NAMES else _did_you_mean(attr)
                raise PluginContractError(
                    f"plugin {plugin!r} defines {attr!r} without @hookimpl, so it would never be called; decorate "
                    f"it (from sgl.core.hooks import hookimpl){hint}"
                )
            continue
        if attr not in HOOK_NAMES:
            raise PluginContractError(
                f"plugin {plugin!r} implements unknown hook {attr!r}{_did_you_mean(attr)} "
                f"(known hooks: {', '.join(HOOK_NAMES)})"
            )
        spec_args = set(inspect.signature(getattr(SglHookSpecs, attr)).parameters) - {"self"}
        impl_args = set(inspect.signature(obj).parameters) - {"self"}
        if not impl_args <= spec_args:
            raise PluginContractError(
                f"plugin {plugin!r} hook {attr!r} takes {sorted(impl_args)}; expected {expected_signature(attr)}"
            )


class _Registration(NamedTuple):
    hook: str
    name: str
    target: object  # "module:attr", or the object itself for an in-process plugin
    override: bool


class _Contribution(NamedTuple):
    info: PluginInfo
    module: object
    registrations: list[_Registration]
    server_args: type | None


def _call(plugin: str, pm: pluggy.PluginManager, module: object, hook: str) -> object:
    for impl in getattr(pm.hook, hook).get_hookimpls():
        if impl.plugin is module:
            try:
                return impl.function()
            except Exception as exc:
                raise PluginContractError(
                    f"plugin {plugin!r} hook {hook!r} raised {type(exc).__name__}: {_one_line(exc)}"
                ) from exc
    return None


def _registrations(plugin: str, hook: str, result: object) -> list[_Registration]:
    if result is None:
        return []
    if not isinstance(result, dict) or not all(isinstance(k, str) for k in result):
        raise PluginContractError(
            f"plugin {plugin!r} hook {hook!r} returned {type(result).__name__}; expected "
            f"{expected_signature(hook)} mapping names to 'module:attr' strings"
        )
    regs = []
    for name, value in result.items():
        is_override = isinstance(value, Override)
        target = value.target if isinstance(value, Override) else value
        if isinstance(target, str) and ":" not in target:
            raise PluginContractError(
                f"plugin {plugin!r} hook {hook!r} registered {name!r} as {target!r}; expected 'module:attr'"
            )
        if not isinstance(target, str) and not callable(target):
            raise PluginContractError(
                f"plugin {plugin!r} hook {hook!r} registered {name!r} as {type(target).__name__}; expected "
                "'module:attr'"
            )
        regs.append(_Registration(hook, name, target, is_override))
    return regs


def _server_args_type(plugin: str, result: object) -> type | None:
    if result is None:
        return None
    expected = f"expected {expected_signature(SERVER_ARGS_HOOK)} returning 'module:DataclassType'"
    if isinstance(result, str):
        if ":" not in result:
            raise PluginContractError(f"plugin {plugin!r} hook {SERVER_ARGS_HOOK!r} returned {result!r}; {expected}")
        try:
            result = resolve(result)
        except (ImportError, ValueError) as exc:
            raise PluginContractError(
                f"plugin {plugin!r} hook {SERVER_ARGS_HOOK!r}: {_one_line(exc)}; {expected}"
            ) from exc
    try:
        plugin_options(plugin, result)  # type: ignore[arg-type]
    except TypeError as exc:
        raise PluginContractError(f"plugin {plugin!r} hook {SERVER_ARGS_HOOK!r}: {exc}; {expected}") from exc
    return result  # type: ignore[return-value]


def _contribution(plugins: Plugins, info: PluginInfo, module: object, regs: list[_Registration]) -> _Contribution:
    """Checks the module, registers it with pluggy and calls its registration hooks into ``regs`` (which keeps
    what was collected when a later hook breaks the contract); nothing is committed yet."""
    check_plugin_module(info.name, module)
    try:
        plugins.manager.register(module, name=info.name)
        plugins.manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginContractError(f"plugin {info.name!r}: {_one_line(exc)}") from exc
    for hook in REGISTRY_HOOKS:
        regs += _registrations(info.name, hook, _call(info.name, plugins.manager, module, hook))
    options = _server_args_type(info.name, _call(info.name, plugins.manager, module, SERVER_ARGS_HOOK))
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


def _skip(plugins: Plugins, info: PluginInfo, error: str, claims: list[_Registration], complete: bool) -> None:
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


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
            error = f"plugin {ep.name!r} failed to import {ep.value!r}: {type(exc).__name__}: {_one_line(exc)}"
            _skip(plugins, info, error, [], complete=False)
            continue
        sources.append((info, module))
    for name, module in (extra or {}).items():
        sources.append((PluginInfo(name, getattr(module, "__name__", repr(module)), "(in-process)", "-"), module))
    contributions = []
    for info, module in sources:
        claims: list[_Registration] = []
        try:
            contributions.append(_contribution(plugins, info, module, claims))
        except PluginContractError as exc:
            _unregister(plugins, module)
            _skip(plugins, info, str(exc), claims, complete=False)
    overridden: dict[tuple[str, str], str] = {}
    queued: list[tuple[str, _Registration]] = []
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
