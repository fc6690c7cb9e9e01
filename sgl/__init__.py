"""sgl: an LLM serving engine whose core knows no hardware.

Public names are imported lazily so that `import sgl` (and plugin discovery) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Engine": "sgl.core.engine",
    "SamplingParams": "sgl.core.sampling.params",
    "ServerArgs": "sgl.core.config",
    # the frontend language (HTTP only; imports no torch)
    "function": "sgl.lang",
    "gen": "sgl.lang",
    "select": "sgl.lang",
    "system": "sgl.lang",
    "user": "sgl.lang",
    "assistant": "sgl.lang",
    "RuntimeEndpoint": "sgl.lang",
    "OpenAICompatible": "sgl.lang",
    "set_default_backend": "sgl.lang",
    "BackendError": "sgl.lang",
}

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.engine import Engine
    from sgl.core.sampling.params import SamplingParams


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sgl' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "BackendError", "Engine", "OpenAICompatible", "RuntimeEndpoint", "SamplingParams", "ServerArgs", "__version__",
    "assistant", "function", "gen", "select", "set_default_backend", "system", "user",
]
