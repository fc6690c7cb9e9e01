"""The whole plugin contract: every hook a plugin may implement, declared with pluggy.

A plugin is a module named by an entry point in the group ``sgl.plugins``; its hook implementations are plain
functions decorated with ``@hookimpl``. Each hook returns registrations as ``{name: "module:attr"}`` strings so that
discovery imports nothing heavy; the target is imported only when it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs

PROJECT = "sgl"
ENTRY_POINT_GROUP = "sgl.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class SglHookSpecs:
    """Hook specifications. A hook implementation must use exactly these names and a subset of these arguments."""

    @hookspec
    def sgl_platforms(self) -> dict[str, str]:
        """Hardware platforms: ``{name: "module:PlatformSubclass"}``."""
        raise NotImplementedError

    @hookspec
    def sgl_models(self) -> dict[str, str]:
        """Model architectures: ``{"LlamaForCausalLM": "module:Class"}`` keyed by config.json's architectures."""
        raise NotImplementedError

    @hookspec
    def sgl_attention_backends(self) -> dict[str, str]:
        """Attention backends: ``{name: "module:factory"}``; ``factory(runner) -> AttentionBackend``."""
        raise NotImplementedError

    @hookspec
    def sgl_grammar_backends(self) -> dict[str, str]:
        """Grammar backends: ``{name: "module:GrammarBackendSubclass"}``, chosen by ``--grammar-backend``."""
        raise NotImplementedError

    @hookspec
    def sgl_startup_check(self, server_args: ServerArgs) -> None:
        """Called once before the engine starts; raise ValueError to refuse a configuration."""
        raise NotImplementedError


HOOK_NAMES: tuple[str, ...] = tuple(n for n in vars(SglHookSpecs) if n.startswith("sgl_"))
