"""How many bytes of input one token can stand for at most, so a prompt's byte length bounds its token count.

A prompt of B bytes has at least ceil(B / max_token_bytes) tokens, which lets the edge refuse a prompt far longer
than the context without tokenizing it (seconds for megabytes). The bound holds only when the tokenizer keeps
every input byte (no normalizer or pre-tokenizer that drops text, no unknown token that swallows a whole word);
for any other pipeline this answers None and the edge tokenizes first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import tokenizers

# Normalizers that never remove input; the factor bounds how much they can shrink its UTF-8 bytes (NFC composes
# Hangul jamo 9 -> 3 bytes; lowercase maps the Kelvin sign, 3 bytes, to "k"). Others (strip, strip accents, BERT's
# control-character cleanup, precompiled SentencePiece maps, replace) may delete text: no bound.
_NORMALIZER_SHRINK = {"NFC": 4, "NFD": 4, "NFKC": 4, "NFKD": 4, "Lowercase": 3, "Prepend": 1}
# Pre-tokenizers that keep every input character (they only split); Split keeps them unless it removes the pattern.
_KEEPING_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Digits", "Punctuation", "UnicodeScripts", "Split", "Sequence"}
_UTF8_MAX = 4


def _normalizer_shrink(spec: Mapping[str, Any] | None) -> int | None:
    if spec is None:
        return 1
    kind = spec.get("type")
    if kind == "Sequence":
        factor = 1
        for part in spec.get("normalizers") or []:
            f = _normalizer_shrink(part)
            if f is None:
                return None
            factor *= f
        return factor
    if kind == "Replace":
        content = spec.get("content") or ""
        pattern = (spec.get("pattern") or {}).get("String")
        # NOTE: Llama-2's " " -> "▁" only grows the text; a regex or a shorter replacement might shrink it
        return 1 if isinstance(pattern, str) and len(content.encode()) >= len(pattern.encode()) > 0 else None
    return _NORMALIZER_SHRINK.get(str(kind))


def _keeps_input(spec: Mapping[str, Any] | None) -> bool:
    if spec is None:
        return True
    kind = spec.get("type")
    if kind not in _KEEPING_PRE_TOKENIZERS:
        return False
    if kind == "Split" and spec.get("behavior") == "Removed":
        return False
    if kind == "Sequence":
        return all(_keeps_input(p) for p in spec.get("pretokenizers") or [])
    return True


def _is_byte_level(spec: Mapping[str, Any] | None) -> bool:
    if spec is None:
        return False
    if spec.get("type") == "Sequence":
        return any(_is_byte_level(p) for p in spec.get("pretokenizers") or [])
    return spec.get("type") == "ByteLevel"


def _unknown_span(model: Mapping[str, Any]) -> int | None:
    """Input bytes the model's unknown token can cover (0 without one), None when unbounded."""
    kind = model.get("type")
    if kind == "BPE":
        if model.get("unk_token") is None or model.get("byte_fallback"):
            return 0
        return None if model.get("fuse_unk") else _UTF8_MAX
    if kind == "WordPiece":
        return int(model.get("max_input_chars_per_word", 100)) * _UTF8_MAX
    return None  # Unigram and WordLevel map a whole unknown piece or word to one token


def max_token_bytes(backend: tokenizers.Tokenizer) -> int | None:
    """The most input bytes one token stands for, or None when the pipeline may drop input (then no bound holds)."""
    spec = json.loads(backend.to_str())
    shrink = _normalizer_shrink(spec.get("normalizer"))
    unknown = _unknown_span(spec.get("model") or {})
    if shrink is None or unknown is None or not _keeps_input(spec.get("pre_tokenizer")):
        return None
    # NOTE: a byte-level vocabulary spells each input byte as one character; added tokens match the raw text.
    byte_level = _is_byte_level(spec.get("pre_tokenizer"))
    added = {tok.content for tok in backend.get_added_tokens_decoder().values()}
    longest = max((len(tok) if byte_level and tok not in added else len(tok.encode("utf-8"))
                   for tok in backend.get_vocab(with_added_tokens=True)), default=1)
    return max(longest, unknown, 1) * shrink
