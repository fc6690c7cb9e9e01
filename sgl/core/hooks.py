"""The whole plugin contract: every hook a plugin may implement, declared with pluggy.

A plugin is a module named by an entry point in the group ``sgl.plugins``; its hook implementations are plain
functions decorated with ``@hookimpl``. In that module the prefix ``sgl_`` is reserved for hooks: a function named
``sgl_*`` without ``@hookimpl`` is a contract error, not something pluggy may silently skip.

Each registry hook returns ``{name: "module:attr"}`` strings so that discovery imports nothing heavy; the target is
imported only when it is used. A name another plugin already registers is a clash (the later plugin is reported and
skipped) unless the value is wrapped in ``override(...)``, which replaces the earlier entry on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs

PROJECT = "sgl"
ENTRY_POINT_GROUP = "sgl.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class Override:
    """A registration that replaces an entry of the same name from another plugin (a built-in one included)."""

    target: str  # "module:attr", as for a plain registration


def override(target: str) -> Override:
    """Marks a registration as a deliberate replacement: ``{"LlamaForCausalLM": override("mine.model:MyLlama")}``."""
    return Override(target)


Registrations = dict[str, "str | Override"]


class SglHookSpecs:
    """Hook specifications. A hook implementation must use exactly these names and a subset of these arguments."""

    @hookspec
    def sgl_platforms(self) -> Registrations:
        """Hardware platforms: ``{name: "module:PlatformSubclass"}``, chosen by ``--backend``."""
        raise NotImplementedError

    @hookspec
    def sgl_models(self) -> Registrations:
        """Model architectures: ``{"LlamaForCausalLM": "module:Class"}`` keyed by config.json's architectures."""
        raise NotImplementedError

    @hookspec
    def sgl_attention_backends(self) -> Registrations:
        """Attention backends: ``{name: "module:factory"}``; ``factory(runner) -> AttentionBackend``."""
        raise NotImplementedError

    @hookspec
    def sgl_grammar_backends(self) -> Registrations:
        """Grammar backends: ``{name: "module:GrammarBackendSubclass"}``, chosen by ``--grammar-backend``."""
        raise NotImplementedError

    @hookspec
    def sgl_speculative_algorithms(self) -> Registrations:
        """Speculative decoding: ``{name: "module:SpeculativeAlgorithmSubclass"}`` (sgl.core.speculative.base),
        chosen by ``--speculative-algorithm``."""
        raise NotImplementedError

    @hookspec
    def sgl_lora_backends(self) -> Registrations:
        """LoRA backends: ``{name: "module:LoRABackendSubclass"}`` (sgl.core.lora.base), chosen by
        ``--lora-backend``."""
        raise NotImplementedError

    @hookspec
    def sgl_quantization_methods(self) -> Registrations:
        """Quantization methods: ``{name: "module:QuantizationMethodSubclass"}`` (sgl.core.quant.base), chosen by
        ``--quantization`` or by the ``quant_method`` of a checkpoint's ``quantization_config``."""
        raise NotImplementedError

    @hookspec
    def sgl_tool_call_parsers(self) -> Registrations:
        """Tool-call parsers: ``{name: "module:ToolCallParserSubclass"}`` (sgl.api.tool_calls.base), chosen by
        ``--tool-call-parser``."""
        raise NotImplementedError

    @hookspec
    def sgl_reasoning_parsers(self) -> Registrations:
        """Reasoning parsers: ``{name: "module:ReasoningParserSubclass"}`` (sgl.api.reasoning), chosen by
        ``--reasoning-parser``."""
        raise NotImplementedError

    @hookspec
    def sgl_server_args(self) -> str:
        """This plugin's own server arguments: ``"module:DataclassType"`` (a light module: the dataclass only).

        Each field becomes ``--<plugin>-<field>`` in ``sgl serve --help``, in a group named after the plugin; the
        parsed instance reaches the plugin through ``sgl.core.plugin_options.plugin_args(server_args, DataclassType)``.
        """
        raise NotImplementedError

    @hookspec
    def sgl_startup_check(self, server_args: ServerArgs) -> None:
        """Called once before the engine starts; raise ValueError to refuse a configuration."""
        raise NotImplementedError


HOOK_NAMES: tuple[str, ...] = tuple(n for n in vars(SglHookSpecs) if n.startswith("sgl_"))
