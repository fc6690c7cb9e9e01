"""The core's own attention backends, by name. Plugins add theirs through ``sgl_attention_backends``.

A leaf module: discovery (``sgl.core.plugins``) seeds its registry from ``BUILTIN``, and whoever builds a backend
is handed that registry, so nothing here imports the plugin layer (or torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sgl.core.attention.base import AttentionBackend

BUILTIN: dict[str, str] = {"torch_native": "sgl.core.attention.torch_native:TorchNativeAttnBackend"}
BUILTIN_ORIGIN = "sgl (core)"

AttentionBackendFactory = Callable[[Any], "AttentionBackend"]
"""``factory(runner) -> AttentionBackend``: a backend class or a function; the runner gives pools and shapes."""
