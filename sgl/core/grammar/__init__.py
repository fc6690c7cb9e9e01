"""Grammar-constrained decoding: the backend contract (base) and the scheduler's GrammarManager (manager)."""

from __future__ import annotations

from sgl.core.grammar.base import (
    Grammar,
    GrammarBackend,
    GrammarCompileError,
    GrammarKey,
    GrammarKind,
    GrammarVocab,
    grammar_key,
)
from sgl.core.grammar.manager import (
    GrammarManager,
    RequestGrammar,
    build_vocab_mask,
    check_grammar_request,
    load_backend_class,
    unpack_bitmask,
)

__all__ = [
    "Grammar", "GrammarBackend", "GrammarCompileError", "GrammarKey", "GrammarKind", "GrammarManager",
    "GrammarVocab", "RequestGrammar", "build_vocab_mask", "check_grammar_request", "grammar_key",
    "load_backend_class", "unpack_bitmask",
]
