"""The grammar contract: what a grammar backend plugin implements and what the scheduler asks of it.

Core names no grammar library. A backend (``sgl_grammar_backends`` hook) compiles a constraint once per distinct
(kind, spec) and hands out one ``Grammar`` matcher per request; the scheduler feeds it sampled tokens and asks it
for the next token's allowed set as a packed bitmask, which core turns into the sampler's ``vocab_mask``.
"""

from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from sgl.core.sampling.params import SamplingParams

BITS_PER_WORD = 32
GRAMMAR_EXTRA = "pip install 'sgl[grammar]'"


class GrammarKind(str, enum.Enum):
    JSON = "json_schema"
    REGEX = "regex"
    EBNF = "ebnf"
    CHOICES = "choices"  # spec: a JSON list of strings; the output is exactly one of them
    STRUCTURAL_TAG = "structural_tag"  # spec: SGLang's structural tag JSON (text, JSON, tags, any-text regions)


class GrammarKey(NamedTuple):
    """What a compiled grammar is cached under; equal keys give interchangeable grammars."""

    kind: GrammarKind
    spec: str


class GrammarCompileError(ValueError):
    """The constraint is malformed or unsupported; the message is the compiler's, for the client (HTTP 400)."""


@dataclass(frozen=True)
class GrammarVocab:
    """What a backend needs to know about the tokenizer: where it lives and which ids end generation.

    NOTE: ``vocab_size`` is the model's logits width, which may exceed the tokenizer's; ids past the tokenizer's
    vocabulary are never allowed.
    """

    tokenizer_dir: str
    vocab_size: int
    stop_token_ids: tuple[int, ...]


def bitmask_words(vocab_size: int) -> int:
    return -(-vocab_size // BITS_PER_WORD)


class Grammar(ABC):
    """One request's matcher state. Not thread-safe: only the scheduler thread touches it."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advances by one token; False (state unchanged) when the grammar forbids it."""

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Writes the allowed next tokens into ``bitmask[row]``: int32 CPU words, bit ``t % 32`` of word
        ``t // 32`` set when token ``t`` is allowed. Stop tokens are allowed only where the grammar may end."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once a stop token was accepted at a point where the grammar is complete."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undoes the last ``num_tokens`` accepted tokens."""

    @abstractmethod
    def fork(self) -> Grammar:
        """An independent matcher in the same state (how each request gets its own from the cached one)."""

    def jump_forward_string(self) -> str:
        """Text every valid continuation starts with ("" when unknown or not supported)."""
        return ""


class GrammarBackend(ABC):
    """Compiles constraints for one tokenizer. ``compile`` runs on worker threads and must be thread-safe."""

    def __init__(self, vocab: GrammarVocab) -> None:
        self.vocab = vocab
        # the ids the bitmasks cover (a backend may narrow it to the tokenizer's own): a constrained row forbids
        # every id past it
        self.mask_vocab_size = vocab.vocab_size

    @abstractmethod
    def compile(self, key: GrammarKey) -> Grammar:
        """A fresh matcher at the grammar's start; raises GrammarCompileError for a bad spec."""

    def fill_bitmasks(self, grammars: Sequence[Grammar], bitmask: torch.Tensor, rows: Sequence[int]) -> None:
        """Fills ``bitmask[rows[i]]`` for ``grammars[i]`` (matchers this backend compiled), once per decode step.

        A backend may override this to fill rows in parallel: it runs on the scheduler thread, and at batch 32 the
        rows one by one cost more host time than a forward pass hides.
        """
        for grammar, row in zip(grammars, rows):
            grammar.fill_bitmask(bitmask, row)


def grammar_key(params: SamplingParams) -> GrammarKey | None:
    """The request's constraint, or None; ``validate()`` already ensured there is at most one."""
    if params.json_schema is not None:
        return GrammarKey(GrammarKind.JSON, params.json_schema)
    if params.regex is not None:
        return GrammarKey(GrammarKind.REGEX, params.regex)
    if params.ebnf is not None:
        return GrammarKey(GrammarKind.EBNF, params.ebnf)
    if params.choices is not None:
        return GrammarKey(GrammarKind.CHOICES, json.dumps(list(params.choices)))
    if params.structural_tag is not None:
        return GrammarKey(GrammarKind.STRUCTURAL_TAG, params.structural_tag)
    return None
