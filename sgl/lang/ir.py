"""The program IR: what `s += ...` accepts. Values only; the interpreter (state.py) gives them meaning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from sgl.lang.backend.base import SamplingArgs, schema_string

ScoreBy = Literal["mean", "total"]


class Expr:
    """Anything appendable to a state; `+` joins pieces so `"Q: " + gen("a")` is one expression."""

    def __add__(self, other: Any) -> Seq:
        return Seq((*flatten(self), *flatten(other)))

    def __radd__(self, other: Any) -> Seq:
        return Seq((*flatten(other), *flatten(self)))


@dataclass(frozen=True)
class Text(Expr):
    text: str


@dataclass(frozen=True)
class Gen(Expr):
    """Sampled text, stored under `name` (None: appended but not stored)."""

    name: str | None
    args: SamplingArgs


@dataclass(frozen=True)
class Select(Expr):
    """The choice the model finds likeliest after the prompt, by its prompt logprobs (no sampling)."""

    name: str | None
    choices: tuple[str, ...]
    score_by: ScoreBy = "mean"


@dataclass(frozen=True)
class RoleBegin(Expr):
    role: str


@dataclass(frozen=True)
class RoleEnd(Expr):
    role: str


@dataclass(frozen=True)
class Seq(Expr):
    items: tuple[Any, ...]  # Exprs and ProgramStates (joins); flat


def flatten(item: Any) -> tuple[Any, ...]:
    """Strings become Text; Seqs are spliced; anything else (an Expr, a forked state) stays as it is."""
    if isinstance(item, str):
        return (Text(item),)
    if isinstance(item, Seq):
        return item.items
    if isinstance(item, Expr) or hasattr(item, "_join_into"):
        return (item,)
    raise TypeError(f"cannot append a {type(item).__name__} to a program state; use str, gen, select or a role")


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    stop: str | Sequence[str] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    regex: str | None = None,
    json_schema: str | dict[str, Any] | type | None = None,
    choices: Sequence[str] | None = None,
    *,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    stop_token_ids: Sequence[int] | None = None,
) -> Gen | Select:
    """Generates text into `name`; with `choices` it is `select(name, choices)`."""
    if choices is not None:
        return select(name, choices)
    if regex is not None and json_schema is not None:
        raise ValueError("give at most one of regex and json_schema")
    if max_tokens is not None and max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return Gen(name, SamplingArgs(
        max_tokens=max_tokens, stop=stops, stop_token_ids=tuple(stop_token_ids or ()), temperature=temperature,
        top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, ignore_eos=ignore_eos, regex=regex, json_schema=schema_string(json_schema)))


def select(name: str | None, choices: Sequence[str], score_by: ScoreBy = "mean") -> Select:
    """Picks one of `choices` by its logprobs: "mean" (length-normalised, the default, as SGLang) or "total"."""
    picks = tuple(choices)
    if not picks or not all(isinstance(c, str) and c for c in picks):
        raise ValueError("select needs a non-empty list of non-empty strings")
    if score_by not in ("mean", "total"):
        raise ValueError(f"score_by must be 'mean' or 'total', got {score_by!r}")
    return Select(name, picks, score_by)


def role(name: str, content: Any = None) -> Seq:
    """Role `name` wrapped around `content` (a string, gen, select or a `+` of them)."""
    inner = () if content is None else flatten(content)
    return Seq((RoleBegin(name), *inner, RoleEnd(name)))


def system(content: Any = None) -> Seq:
    return role("system", content)


def user(content: Any = None) -> Seq:
    return role("user", content)


def assistant(content: Any = None) -> Seq:
    return role("assistant", content)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")


Appendable = Union[str, Expr]
