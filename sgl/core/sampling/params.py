"""What one request may ask of the sampler, with SGLang's native field names and defaults.

Validation lives here because it happens once, at the edge (API, Engine.generate): the scheduler only ever sees
params that passed `validate()`, so the batch code never re-checks them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# NOTE: SGLang treats temperatures below this as greedy: dividing logits by ~0 overflows to inf and softmax to NaN.
GREEDY_TEMPERATURE_EPS = 1e-6

PENALTY_LIMIT = 2.0
LOGIT_BIAS_LIMIT = 100.0
REPETITION_PENALTY_MAX = 2.0

# Accepted spellings of a field in from_dict (OpenAI-style clients say sampling_seed).
_ALIASES = {"sampling_seed": "seed"}

_INT_FIELDS = ("max_new_tokens", "min_new_tokens", "top_k", "n")
_FLOAT_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
)
_BOOL_FIELDS = ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim")
_STR_FIELDS = ("json_schema", "regex", "ebnf", "structural_tag")
CONSTRAINT_FIELDS = ("json_schema", "regex", "ebnf", "choices", "structural_tag")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    """Per-request sampling options. `top_k` of -1 or 0 means disabled; `stop` is normalised to a list."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    seed: int | None = None
    logit_bias: dict[int | str, float] | None = None
    # Carried as strings; a grammar plugin compiles and validates them.
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    choices: list[str] | None = None  # the output is exactly one of these strings
    structural_tag: str | None = None  # SGLang's structural tag JSON (tool-call formats, free text until a tag)
    custom_params: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # NOTE: normalisation never raises; anything it cannot normalise is left for validate() to name.
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif isinstance(self.stop, (tuple, set)):
            self.stop = list(self.stop)
        if isinstance(self.choices, tuple):
            self.choices = list(self.choices)
        if isinstance(self.stop_token_ids, (tuple, set, frozenset)):
            self.stop_token_ids = list(self.stop_token_ids)
        if isinstance(self.logit_bias, Mapping):
            self.logit_bias = {_int_key(k): v for k, v in self.logit_bias.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SamplingParams:
        """Builds params from a request body; None values mean "unset" because SGLang clients send nulls."""
        if d is None:
            return cls()
        valid = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in d.items():
            name = _ALIASES.get(key, key)
            if name not in valid:
                unknown.append(str(key))
                continue
            if value is None:
                continue
            if name in ("json_schema", "structural_tag") and isinstance(value, Mapping):
                value = json.dumps(value)  # NOTE: clients send the schema as an object or as its JSON text
            if name in kwargs and kwargs[name] != value:
                raise ValueError(
                    f"sampling params: {key!r} conflicts with {name!r} ({value!r} != {kwargs[name]!r})"
                )
            kwargs[name] = value
        if unknown:
            raise ValueError(
                f"unknown sampling params: {', '.join(sorted(unknown))}; "
                f"valid fields are: {', '.join(sorted(valid | set(_ALIASES)))}"
            )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE_EPS or self.top_k == 1

    def validate(self, vocab_size: int | None = None) -> None:
        """Raises ValueError naming the field and its limit; token ids are range-checked only when vocab_size is known.

        Wrong types are ValueErrors too: the edge turns every ValueError into a client error (HTTP 400).
        """
        self._validate_types()
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be <= max_new_tokens ({self.max_new_tokens}), got {self.min_new_tokens}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 or 0 (disabled) or >= 1, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not -PENALTY_LIMIT <= value <= PENALTY_LIMIT:
                raise ValueError(f"{name} must be in [-{PENALTY_LIMIT}, {PENALTY_LIMIT}], got {value}")
        if not 0.0 < self.repetition_penalty <= REPETITION_PENALTY_MAX:
            raise ValueError(
                f"repetition_penalty must be in (0, {REPETITION_PENALTY_MAX}], got {self.repetition_penalty}"
            )
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        self._validate_constraint()
        self._validate_stops(vocab_size)
        self._validate_logit_bias(vocab_size)

    def _validate_types(self) -> None:
        for name in _INT_FIELDS:
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in _FLOAT_FIELDS:
            if not _is_number(getattr(self, name)):
                raise ValueError(f"{name} must be a number, got {getattr(self, name)!r}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {getattr(self, name)!r}")  # noqa: TRY004
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {type(value).__name__}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.custom_params is not None and not isinstance(self.custom_params, Mapping):
            raise ValueError(f"custom_params must be an object, got {type(self.custom_params).__name__}")

    def _validate_constraint(self) -> None:
        given = [name for name in CONSTRAINT_FIELDS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of {', '.join(CONSTRAINT_FIELDS)}; got {', '.join(given)}")
        if self.choices is not None:
            if not isinstance(self.choices, list) or not self.choices:
                raise ValueError("choices must be a non-empty list of strings")
            for c in self.choices:
                if not isinstance(c, str) or not c:
                    raise ValueError(f"choices must be non-empty strings, got {c!r}")

    def _validate_stops(self, vocab_size: int | None) -> None:
        if self.stop is not None:
            if not isinstance(self.stop, list):
                raise ValueError(
                    f"stop must be a string or a list of strings, got {type(self.stop).__name__}"
                )
            for s in self.stop:
                if not isinstance(s, str) or not s:
                    raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        if self.stop_token_ids is not None:
            if not isinstance(self.stop_token_ids, list):
                raise ValueError(
                    f"stop_token_ids must be a list of integers, got {type(self.stop_token_ids).__name__}"
                )
            for t in self.stop_token_ids:
                _check_token_id("stop_token_ids", t, vocab_size)

    def _validate_logit_bias(self, vocab_size: int | None) -> None:
        if self.logit_bias is None:
            return
        if not isinstance(self.logit_bias, Mapping):
            kind = type(self.logit_bias).__name__
            raise ValueError(f"logit_bias must be an object of token id -> bias, got {kind}")  # noqa: TRY004
        for key, value in self.logit_bias.items():
            _check_token_id("logit_bias", key, vocab_size)
            if not _is_number(value) or not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:
                raise ValueError(
                    f"logit_bias values must be numbers in [-{LOGIT_BIAS_LIMIT}, {LOGIT_BIAS_LIMIT}], "
                    f"got {value!r} for token {key}"
                )


def _int_key(key: int | str) -> int | str:
    """JSON object keys arrive as strings; "42" becomes 42, anything else is kept for validate() to reject."""
    if isinstance(key, str):
        try:
            return int(key)
        except ValueError:
            return key
    return key


def _check_token_id(name: str, token: object, vocab_size: int | None) -> None:
    if not _is_int(token):
        raise ValueError(f"{name} token ids must be integers, got {token!r}")
    assert isinstance(token, int)
    if token < 0 or (vocab_size is not None and token >= vocab_size):
        bound = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise ValueError(f"{name} token id {token} is outside the vocabulary {bound}")
