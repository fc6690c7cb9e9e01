"""A small typed name -> object registry, with lazy "module:attr" targets."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Iterator
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
    A name that a plugin which failed to load would have provided raises that plugin's failure instead.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._origin: dict[str, str] = {}
        self._replaced: dict[str, str] = {}  # name -> the origin whose entry an override replaced
        self._failed: dict[str, str] = {}  # name -> why the plugin that would provide it was skipped
        self._notes: list[str] = []  # failed plugins whose names are unknown (they did not import)

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
        if name in self._entries and not _same(self._entries[name], obj):
            if not replace:
                raise ValueError(
                    f"{self.kind} {name!r} is registered twice: by {self._origin[name]!r} and by {origin!r}"
                )
            self._replaced[name] = self._origin[name]
        self._entries[name] = obj
        self._origin[name] = origin
        self._failed.pop(name, None)
        return obj

    def fail(self, name: str, reason: str) -> None:
        """Records that ``name`` would have come from a plugin that was skipped; ``get(name)`` raises ``reason``."""
        if name not in self._entries:
            self._failed[name] = reason

    def note(self, reason: str) -> None:
        """Records a skipped plugin whose registrations are unknown; unknown-name errors mention it."""
        self._notes.append(reason)

    def get(self, name: str) -> T:
        try:
            entry = self._entries[name]
        except KeyError:
            raise self.unknown(name) from None
        if isinstance(entry, str):
            try:
                entry = resolve(entry)  # type: ignore[assignment]
            except ImportError as exc:
                raise ImportError(
                    f"{self.kind} {name!r} (plugin {self._origin[name]!r}) cannot be imported: {exc}"
                ) from exc
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def unknown(self, name: str, also_known: Collection[str] = ()) -> ValueError:
        """The error for a name that is not registered: the skipped plugin that claimed it, else the known names."""
        if name in self._failed:
            return ValueError(f"{self.kind} {name!r} is unavailable: {self._failed[name]}")
        known = ", ".join(sorted(set(self._entries) | set(also_known))) or "(none)"
        notes = f"; plugins that failed to load: {'; '.join(self._notes)}" if self._notes else ""
        return ValueError(f"unknown {self.kind} {name!r}; known: {known}{notes}")

    def failure(self, name: str) -> str | None:
        """Why the plugin that would provide ``name`` was skipped, if one was."""
        return self._failed.get(name)

    @property
    def notes(self) -> list[str]:
        return list(self._notes)

    def origin(self, name: str) -> str:
        return self._origin[name]

    def replaced(self, name: str) -> str | None:
        """The plugin whose entry ``name`` an override replaced, if any."""
        return self._replaced.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def select_class(registry: Registry[type], name: str, flag: str, base: type, not_yet: Collection[str] = ()) -> type:
    """The class that ``flag NAME`` selects: registered under ``name`` and a subclass of ``base``.

    A name the core knows but no installed plugin implements yet (``not_yet``) is refused with one line; an unknown
    name lists the known ones; a name whose plugin failed to load raises that plugin's failure.
    """
    if name not in registry:
        if name in not_yet and registry.failure(name) is None:
            raise ValueError(f"{flag} {name} is not supported yet: no installed plugin provides this {registry.kind}")
        raise ValueError(f"{flag}: {registry.unknown(name, also_known=not_yet)}")
    cls = registry.get(name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(
            f"{flag} {name}: plugin {registry.origin(name)!r} registered {cls!r}, which is not a subclass of "
            f"{base.__module__}.{base.__qualname__}"
        )
    return cls
