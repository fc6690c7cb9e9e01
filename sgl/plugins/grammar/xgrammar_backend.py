"""The xgrammar backend: JSON schema, regex, EBNF and choices compiled to token-level matchers.

Importing this module imports xgrammar; core reaches it only through the registry, so a machine without
xgrammar fails here, where the edge turns the ImportError into "pip install 'sgl[grammar]'".
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers
import torch
import xgrammar as xgr

from sgl.core.grammar.base import (
    Grammar,
    GrammarBackend,
    GrammarCompileError,
    GrammarKey,
    GrammarKind,
    GrammarVocab,
)

# NOTE: compact JSON (no optional whitespace): the output a client gets is the shortest valid one, and a model
# cannot spend its token budget on whitespace.
JSON_SEPARATORS = (",", ":")
_LOG_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


def _clean(exc: BaseException) -> str:
    """xgrammar's C++ messages start with a timestamp and a source location; the client needs neither."""
    return _LOG_PREFIX.sub("", str(exc).strip()).strip()


def _tokenizer_info(vocab: GrammarVocab) -> xgr.TokenizerInfo:
    path = Path(vocab.tokenizer_dir) / "tokenizer.json"
    tok = tokenizers.Tokenizer.from_file(str(path))
    ids = tok.get_vocab(with_added_tokens=True)
    # NOTE: only the tokenizer's own ids: the masks cover them alone (mask_vocab_size), and core forbids the logits
    # columns past them (a padded LM head). xgrammar's fill time grows with the mask's width, not with the grammar.
    encoded = [""] * min(vocab.vocab_size, max(ids.values(), default=-1) + 1)
    for token, idx in ids.items():
        if idx < len(encoded):
            encoded[idx] = token
    # NOTE: special tokens must never match text (a JSON string could otherwise contain "<|eot_id|>", which
    # detokenization drops); xgrammar treats empty entries as special. Stop tokens stay stop tokens.
    for idx, added in tok.get_added_tokens_decoder().items():
        if added.special and idx < len(encoded):
            encoded[idx] = ""
    meta = xgr.TokenizerInfo._detect_metadata_from_hf(tok.to_str())
    return xgr.TokenizerInfo(
        encoded, meta["vocab_type"], vocab_size=len(encoded),
        stop_token_ids=[t for t in vocab.stop_token_ids if t < len(encoded)], add_prefix_space=meta["add_prefix_space"],
    )


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
STRICT_IPV4 = rf"^({_OCTET}\.){{3}}{_OCTET}$"


def patch_schema(node: Any) -> Any:
    """Works around two xgrammar 0.2.9 gaps by rewriting string nodes into stricter, still-valid patterns.

    NOTE: (1) length-bounded strings compile to ``[^"\\\r\n]{m,n}``, which admits raw control characters
    (invalid JSON) and byte sequences that are not UTF-8 (so the decoded text breaks the bounds): they become a
    pattern of printable ASCII without quote or backslash, with the same bounds;
    (2) ``format: ipv4`` admits leading zeros ("01.2.3.4"), which validators reject: it becomes a strict pattern.
    Every output of the rewritten schema is valid for the original one.
    """
    if isinstance(node, list):
        return [patch_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: patch_schema(v) for k, v in node.items()}
    if out.get("type") == "string" and out.get("format") == "ipv4" and "pattern" not in out:
        del out["format"]
        out["pattern"] = STRICT_IPV4
    bounded = "minLength" in out or "maxLength" in out
    if out.get("type") == "string" and bounded and not {"pattern", "format", "enum", "const"} & out.keys():
        lo, hi = int(out.pop("minLength", 0)), out.pop("maxLength", None)
        upper = "" if hi is None else str(int(hi))
        out["pattern"] = f"^[ !#-\\[\\]-~]{{{lo},{upper}}}$"
    return out


def choices_ebnf(choices: list[str]) -> str:
    """``root ::= "a" | "b"``: JSON string escapes are valid EBNF literal escapes."""
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise GrammarCompileError("choices must be a non-empty list of non-empty strings")
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def structural_tag(tag: dict[str, Any]) -> str:
    """SGLang's structural tag (``{"type": "structural_tag", "format": ...}``, or the bare format) as xgrammar's JSON;
    the schemas inside are patched as ``patch_schema`` says, so tool arguments get the same stricter strings."""
    if tag.get("type") != "structural_tag":
        tag = {"type": "structural_tag", "format": tag}
    return json.dumps(_patch_formats(tag))


def _patch_formats(node: Any) -> Any:
    if isinstance(node, list):
        return [_patch_formats(v) for v in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "json_schema" and isinstance(node.get("json_schema"), dict):
        return {**node, "json_schema": patch_schema(node["json_schema"])}
    return {k: _patch_formats(v) for k, v in node.items()}


class XGrammarMatcher(Grammar):
    def __init__(self, matcher: xgr.GrammarMatcher) -> None:
        self._m = matcher

    def accept_token(self, token_id: int) -> bool:
        return bool(self._m.accept_token(token_id))

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        return bool(self._m.is_terminated())

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self._m.rollback(num_tokens)

    def fork(self) -> Grammar:
        return XGrammarMatcher(self._m.fork())

    def jump_forward_string(self) -> str:
        return str(self._m.find_jump_forward_string())


class XGrammarBackend(GrammarBackend):
    """One GrammarCompiler per tokenizer; xgrammar's compiler is thread-safe and caches by spec itself."""

    def __init__(self, vocab: GrammarVocab, compiler_threads: int = 2) -> None:
        super().__init__(vocab)
        info = _tokenizer_info(vocab)
        self.mask_vocab_size = info.vocab_size
        self.compiler = xgr.GrammarCompiler(info, max_threads=compiler_threads)
        self._batch = xgr.BatchGrammarMatcher()  # NOTE: fills many rows on xgrammar's own threads, off the GIL

    def fill_bitmasks(self, grammars: Sequence[Grammar], bitmask: torch.Tensor, rows: Sequence[int]) -> None:
        if len(grammars) < 2:
            super().fill_bitmasks(grammars, bitmask, rows)
            return
        matchers = [g._m for g in grammars if isinstance(g, XGrammarMatcher)]
        if len(matchers) != len(grammars):
            raise TypeError("fill_bitmasks got a matcher that another backend compiled")
        self._batch.batch_fill_next_token_bitmask(matchers, bitmask, list(rows))

    def compile(self, key: GrammarKey) -> Grammar:
        try:
            if key.kind is GrammarKind.JSON:
                schema = patch_schema(json.loads(key.spec))
                compiled = self.compiler.compile_json_schema(
                    json.dumps(schema), any_whitespace=False, separators=JSON_SEPARATORS, strict_mode=True
                )
            elif key.kind is GrammarKind.REGEX:
                compiled = self.compiler.compile_regex(key.spec)
            elif key.kind is GrammarKind.EBNF:
                compiled = self.compiler.compile_grammar(key.spec)
            elif key.kind is GrammarKind.STRUCTURAL_TAG:
                compiled = self.compiler.compile_structural_tag(structural_tag(json.loads(key.spec)))
            else:
                compiled = self.compiler.compile_grammar(choices_ebnf(json.loads(key.spec)))
        except GrammarCompileError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the parser's message
            raise GrammarCompileError(f"invalid {key.kind.value}: {_clean(exc)}") from exc
        return XGrammarMatcher(xgr.GrammarMatcher(compiled))
