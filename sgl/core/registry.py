"""A small typed name -> object registry, with lazy "module:attr" targets."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


def resolve(target: str) -> object:
    """Imports "package.module:attr" and returns the attribute."""
    module_name, sep, attr = target.partition(":")
    if not sep or not attr:
        raise ValueError(f"expected 'module:attr', got {target!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"{module_name!r} has no attribute {attr!r} (from {target!r})") from None


def _same(a: object, b: object) -> bool:
    return a is b or (isinstance(a, str) and isinstance(b, str) and a == b)


class Registry(Generic[T]):
    """Maps names to objects; an entry may be a "module:attr" string that is imported on first use.

    NOTE: an unknown name raises a ValueError that lists the known names, so a typo in a CLI flag explains itself.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._origin: dict[str, str] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, obj: T | str, *, origin: str = ..., replace: bool = ...) -> T | str: ...

    def register(self, name: str, obj: T | str | None = None, *, origin: str = "sgl", replace: bool = False):  # type: ignore[no-untyped-def]
        if obj is None:

            def decorator(o: T) -> T:
                self.register(name, o, origin=origin, replace=replace)
                return o

            return decorator
        # NOTE: two plugins may name the same shared target ("sgl.kernels.attention_backend:TritonAttnBackend" from
        # both the cuda and the rocm platform): that is one entry, not a clash
        if name in self._entries and not replace and not _same(self._entries[name], obj):
            raise ValueError(
                f"{self.kind} {name!r} is registered twice: by {self._origin[name]!r} and by {origin!r}"
            )
        self._entries[name] = obj
        self._origin[name] = origin
        return obj

    def get(self, name: str) -> T:
        try:
            entry = self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None
        if isinstance(entry, str):
            entry = resolve(entry)  # type: ignore[assignment]
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def origin(self, name: str) -> str:
        return self._origin[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
