"""The hook contract, checked: what a plugin's hooks module may define and what each hook may return.

Every check raises PluginContractError with one line that names the plugin, the hook and what was expected, so a
plugin author reads the fix in the error. Discovery (``sgl.core.plugins``) turns these errors into skipped plugins.
"""

from __future__ import annotations

import difflib
import inspect
from types import ModuleType
from typing import NamedTuple

import pluggy

from sgl.core.hooks import HOOK_NAMES, PROJECT, Override, SglHookSpecs
from sgl.core.plugin_options import plugin_options
from sgl.core.registry import resolve

REGISTRY_HOOKS: dict[str, tuple[str, str]] = {
    "sgl_platforms": ("platforms", "backend"),
    "sgl_models": ("models", "model architecture"),
    "sgl_attention_backends": ("attention_backends", "attention backend"),
    "sgl_grammar_backends": ("grammar_backends", "grammar backend"),
    "sgl_speculative_algorithms": ("speculative_algorithms", "speculative algorithm"),
    "sgl_lora_backends": ("lora_backends", "LoRA backend"),
    "sgl_quantization_methods": ("quantization_methods", "quantization method"),
    "sgl_tool_call_parsers": ("tool_call_parsers", "tool-call parser"),
    "sgl_reasoning_parsers": ("reasoning_parsers", "reasoning parser"),
}
"""Each hook that returns ``{name: "module:attr"}``: the Plugins registry it fills, and what an entry is called."""

SERVER_ARGS_HOOK = "sgl_server_args"


class PluginContractError(Exception):
    """A plugin broke the hook contract; the message names the plugin, the hook and what was expected."""


class Registration(NamedTuple):
    hook: str
    name: str
    target: object  # "module:attr", or the object itself for an in-process plugin
    override: bool


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


def call_hook(plugin: str, pm: pluggy.PluginManager, module: object, hook: str) -> object:
    for impl in getattr(pm.hook, hook).get_hookimpls():
        if impl.plugin is module:
            try:
                return impl.function()
            except Exception as exc:
                raise PluginContractError(
                    f"plugin {plugin!r} hook {hook!r} raised {type(exc).__name__}: {one_line(exc)}"
                ) from exc
    return None


def registrations(plugin: str, hook: str, result: object) -> list[Registration]:
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
        regs.append(Registration(hook, name, target, is_override))
    return regs


def server_args_type(plugin: str, result: object) -> type | None:
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
                f"plugin {plugin!r} hook {SERVER_ARGS_HOOK!r}: {one_line(exc)}; {expected}"
            ) from exc
    try:
        plugin_options(plugin, result)  # type: ignore[arg-type]
    except TypeError as exc:
        raise PluginContractError(f"plugin {plugin!r} hook {SERVER_ARGS_HOOK!r}: {exc}; {expected}") from exc
    return result  # type: ignore[return-value]


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
