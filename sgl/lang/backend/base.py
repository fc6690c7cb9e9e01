"""The backend contract: what the interpreter needs from a server, and the values it gets back."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sgl.lang.chat import ChatTemplate

DEFAULT_MAX_TOKENS = 128


@dataclass(frozen=True)
class SamplingArgs:
    """One gen's sampling parameters in the frontend's names; None means "the server's default"."""

    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    regex: str | None = None
    json_schema: str | None = None  # NOTE: always a JSON string on the wire; dicts are serialised by gen()

    def with_defaults(self, defaults: SamplingArgs) -> SamplingArgs:
        """Fields left None here take the program-wide default (run(temperature=...)); stops are joined."""
        merged = {k: getattr(self, k) if getattr(self, k) is not None else getattr(defaults, k)
                  for k in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "frequency_penalty",
                            "presence_penalty", "ignore_eos", "regex", "json_schema")}
        return replace(self, stop=_union(self.stop, defaults.stop),
                       stop_token_ids=tuple(dict.fromkeys(self.stop_token_ids + defaults.stop_token_ids)), **merged)

    def with_stop(self, extra: str | None) -> SamplingArgs:
        return self if extra is None else replace(self, stop=_union(self.stop, (extra,)))

    def native(self) -> dict[str, Any]:
        """SGLang's sampling_params dict, with only the fields that were set."""
        out: dict[str, Any] = {"max_new_tokens": DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens}
        if self.stop:
            out["stop"] = list(self.stop)
        if self.stop_token_ids:
            out["stop_token_ids"] = list(self.stop_token_ids)
        for key in ("temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty",
                    "ignore_eos", "regex", "json_schema"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a + b))


def schema_string(schema: str | dict[str, Any] | type | None) -> str | None:
    """A JSON schema given as a string, a dict, or a pydantic model class, as the JSON string servers expect."""
    if schema is None or isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        return json.dumps(schema)
    to_schema = getattr(schema, "model_json_schema", None)
    if callable(to_schema):
        return json.dumps(to_schema())
    raise TypeError(f"json_schema must be a str, a dict or a pydantic model, got {type(schema).__name__}")


@dataclass(frozen=True)
class GenResult:
    """A gen's text so far (cumulative in a stream) and the server's meta info for it."""

    text: str
    meta_info: dict[str, Any] = field(default_factory=dict)
    finished: bool = True


@dataclass(frozen=True)
class ChoiceScore:
    """How likely the model finds one choice after the prompt: the sum and the mean of its token logprobs."""

    choice: str
    total: float
    mean: float
    num_tokens: int


class Backend(ABC):
    """A server the interpreter sends prompts to. Implementations are thread-safe: forks and batches share one."""

    @abstractmethod
    def chat_template(self) -> ChatTemplate | None:
        """The model's chat template, or None when the server does not report one (roles then fail clearly)."""

    @abstractmethod
    def generate(self, prompt: str, args: SamplingArgs) -> GenResult: ...

    @abstractmethod
    def generate_stream(self, prompt: str, args: SamplingArgs) -> Iterator[GenResult]:
        """Yields cumulative results as tokens arrive; the last one has finished=True."""

    @abstractmethod
    def score(self, prompt: str, choices: Sequence[str]) -> list[ChoiceScore]:
        """Scores each choice by its prompt logprobs after `prompt`, without sampling."""

    def cache_prefix(self, prompt: str) -> None:
        """Lets the server cache a prefix that forks are about to share; a no-op where that means nothing."""

    def close(self) -> None:
        """Releases connections."""
