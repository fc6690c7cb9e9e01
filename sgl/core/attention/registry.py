"""Attention backends by name: the core's own, plus those plugins register through ``sgl_attention_backends``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sgl.core.attention.base import AttentionBackend
from sgl.core.registry import resolve

BUILTIN: dict[str, str] = {"torch_native": "sgl.core.attention.torch_native:TorchNativeAttnBackend"}

AttentionBackendFactory = Callable[[Any], AttentionBackend]


def known_backends() -> list[str]:
    from sgl.core.plugins import get_plugins

    return sorted(set(BUILTIN) | set(get_plugins().attention_backends.names()))


def attention_backend_factory(name: str) -> AttentionBackendFactory:
    if name in BUILTIN:
        return resolve(BUILTIN[name])  # type: ignore[return-value]
    from sgl.core.plugins import get_plugins

    registry = get_plugins().attention_backends
    if name not in registry:
        raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(known_backends())}")
    return registry.get(name)  # type: ignore[return-value]
