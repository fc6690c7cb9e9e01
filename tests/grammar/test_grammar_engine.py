"""Constrained decoding end to end through sgl.Engine on the demo model: random weights, valid output by construction."""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import sgl
from sgl.core.registry import Registry
from tests.core.engine_utils import make_engine
from tests.grammar.schemas import SCHEMAS

BUDGET = 256


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _finish(out: dict[str, Any]) -> dict[str, Any]:
    return out["meta_info"]["finish_reason"]


def test_json_schema_corpus_outputs_parse_and_validate(engine: sgl.Engine) -> None:
    """Three sampled outputs per schema, all in one batch; every one that stops is an instance of its schema."""
    assert len(SCHEMAS) >= 50
    prompts, params = [], []
    for name, schema in SCHEMAS:
        for k in range(3):
            prompts.append(f"Answer with {name} number {k}:")
            params.append({"json_schema": json.dumps(schema), "max_new_tokens": BUDGET, "temperature": 1.0})
    outs = engine.generate(prompts, params)
    stopped = 0
    for i, out in enumerate(outs):
        name, schema = SCHEMAS[i // 3]
        reason = _finish(out)
        if reason["type"] == "length":
            assert out["meta_info"]["completion_tokens"] == BUDGET, name
            continue
        assert reason["type"] == "stop", (name, reason)
        stopped += 1
        _validator(schema).validate(json.loads(out["text"]))
    assert stopped >= 0.9 * len(outs)


REGEXES = {
    "date": r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    "email": r"[a-z0-9]{1,10}@[a-z]{1,8}\.(com|org|net)",
    "phone": r"\(\d{3}\) \d{3}-\d{4}",
    "ipv4": r"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)",
}


def test_regex_outputs_fullmatch(engine: sgl.Engine) -> None:
    names = [n for n in REGEXES for _ in range(3)]
    outs = engine.generate([f"Write a {n}:" for n in names],
                           [{"regex": REGEXES[n], "max_new_tokens": 64} for n in names])
    for name, out in zip(names, outs):
        assert _finish(out)["type"] == "stop", name
        assert re.fullmatch(REGEXES[name], out["text"]), (name, out["text"])
        if name == "ipv4":
            ipaddress.IPv4Address(out["text"])


ARITHMETIC = r"""
root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor ("*" factor)*
factor ::= num | "(" expr ")"
num ::= [1-9] [0-9]?
"""


def _parse_arithmetic(text: str) -> int:
    """A recursive-descent parser of exactly ARITHMETIC; returns the value, raises on any deviation."""
    pos = 0

    def num() -> int:
        nonlocal pos
        m = re.compile(r"[1-9][0-9]?").match(text, pos)
        if m is None:
            raise ValueError(f"number expected at {pos} in {text!r}")
        pos = m.end()
        return int(m.group())

    def factor() -> int:
        nonlocal pos
        if text.startswith("(", pos):
            pos += 1
            v = expr()
            if not text.startswith(")", pos):
                raise ValueError(f"')' expected at {pos} in {text!r}")
            pos += 1
            return v
        return num()

    def term() -> int:
        nonlocal pos
        v = factor()
        while text.startswith("*", pos):
            pos += 1
            v *= factor()
        return v

    def expr() -> int:
        nonlocal pos
        v = term()
        while pos < len(text) and text[pos] in "+-":
            sign = 1 if text[pos] == "+" else -1
            pos += 1
            v += sign * term()
        return v

    value = expr()
    if pos != len(text):
        raise ValueError(f"trailing text at {pos} in {text!r}")
    return value


def test_ebnf_arithmetic_outputs_parse(engine: sgl.Engine) -> None:
    outs = engine.generate(["Compute:"] * 6, {"ebnf": ARITHMETIC, "max_new_tokens": BUDGET})
    stopped = [o for o in outs if _finish(o)["type"] == "stop"]
    assert len(stopped) >= 5
    for out in stopped:
        _parse_arithmetic(out["text"])


def test_choices_are_exact(engine: sgl.Engine) -> None:
    choices = ["yes", "no", "it depends", 'say "hi"\n']
    outs = engine.generate(["Pick one:"] * 8, {"choices": choices, "max_new_tokens": 32})
    for out in outs:
        assert _finish(out)["type"] == "stop"
        assert out["text"] in choices


def test_invalid_schema_and_regex_abort_with_400_and_engine_keeps_serving(engine: sgl.Engine) -> None:
    bad = engine.generate(["a", "b", "c"], [
        {"json_schema": json.dumps({"type": "objec"}), "max_new_tokens": 16},
        {"regex": "(abc", "max_new_tokens": 16},
        {"ebnf": 'root ::= "a" |', "max_new_tokens": 16},
    ])
    for out, kind in zip(bad, ("json_schema", "regex", "ebnf")):
        reason = _finish(out)
        assert reason["type"] == "abort" and out["meta_info"]["error_status"] == 400
        assert reason["message"].startswith(f"invalid {kind}: ") and len(reason["message"]) > len(kind) + 10
        assert "/project/" not in reason["message"]  # the compiler's source location is not the client's business
    assert "objec" in _finish(bad[0])["message"]
    good = engine.generate("Still there?", {"regex": "[0-9]{3}", "max_new_tokens": 16})
    assert re.fullmatch("[0-9]{3}", good["text"])
    assert engine.generate("free", {"max_new_tokens": 4, "ignore_eos": True})["meta_info"]["completion_tokens"] == 4


def test_edge_rejects_malformed_requests_with_value_error(engine: sgl.Engine) -> None:
    with pytest.raises(ValueError, match="at most one of json_schema, regex, ebnf, choices, structural_tag; got json_schema, regex"):
        engine.generate("x", {"json_schema": "{}", "regex": "a"})
    with pytest.raises(ValueError, match="json_schema is not valid JSON"):
        engine.generate("x", {"json_schema": "{not json"})
    with pytest.raises(ValueError, match="choices must be a non-empty list"):
        engine.generate("x", {"choices": []})


def test_constrained_and_free_requests_share_a_batch(engine: sgl.Engine) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"]}
    params: list[dict[str, Any]] = []
    for i in range(12):
        params.append({"json_schema": json.dumps(schema), "max_new_tokens": 32} if i % 2 == 0
                      else {"max_new_tokens": 12, "ignore_eos": True, "temperature": 0.0})
    outs = engine.generate([f"prompt {i}" for i in range(12)], params)
    free_alone = engine.generate("prompt 1", {"max_new_tokens": 12, "ignore_eos": True, "temperature": 0.0})
    for i, out in enumerate(outs):
        if i % 2 == 0:
            _validator(schema).validate(json.loads(out["text"]))
        else:
            assert out["meta_info"]["completion_tokens"] == 12
    assert outs[1]["output_ids"] == free_alone["output_ids"]  # a free row is untouched by its neighbours' masks


def test_n_greater_than_one_gives_a_valid_output_per_choice(engine: sgl.Engine) -> None:
    schema = {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 2, "maxItems": 3}
    outs = engine.generate("List:", {"json_schema": json.dumps(schema), "n": 4, "max_new_tokens": 64})
    assert len(outs) == 4
    for out in outs:
        _validator(schema).validate(json.loads(out["text"]))


def test_stop_string_ends_a_constrained_request_early(engine: sgl.Engine) -> None:
    outs = engine.generate(["Call:"] * 3, {"regex": r"\d{3}-\d{4}", "stop": "-", "max_new_tokens": 32})
    for out in outs:
        assert _finish(out) == {"type": "stop", "matched": "-"}
        assert re.fullmatch(r"\d{3}", out["text"])


def test_retraction_with_a_tiny_kv_pool_keeps_outputs_valid(demo_model_dir: Path) -> None:
    """Requests retracted mid-output are recomputed with their grammar still matching the tokens they kept."""
    # NOTE: ~60 tokens each, 8 at once, in a pool of 192: the pool runs out whatever the admission timing
    schema = {"type": "object", "properties": {"w": {"type": "string", "pattern": "^[a-z]{100,120}$"}},
              "required": ["w"]}
    eng = make_engine(demo_model_dir, max_total_tokens=192, schedule_conservativeness=0.2, max_running_requests=8)
    try:
        outs = eng.generate([f"Word {i}:" for i in range(8)],
                            {"json_schema": json.dumps(schema), "max_new_tokens": 160})
        assert eng.get_server_info()["retractions"] > 0
    finally:
        eng.shutdown()
    for out in outs:
        assert _finish(out)["type"] == "stop"
        _validator(schema).validate(json.loads(out["text"]))


def test_without_the_grammar_library_a_constrained_request_names_the_extra(
    engine: sgl.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sgl.core.plugins import get_plugins

    fresh: Registry[type] = Registry("grammar backend")
    fresh.register("xgrammar", "sgl.plugins.grammar.xgrammar_backend:XGrammarBackend")
    monkeypatch.setattr(get_plugins(), "grammar_backends", fresh)
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # NOTE: None in sys.modules makes `import xgrammar` fail
    monkeypatch.delitem(sys.modules, "sgl.plugins.grammar.xgrammar_backend", raising=False)
    with pytest.raises(ValueError, match=re.escape("pip install 'sgl[grammar]'")):
        engine.generate("x", {"regex": "a+"})
    assert engine.generate("free", {"max_new_tokens": 3, "ignore_eos": True})["meta_info"]["completion_tokens"] == 3


def test_request_manager_refuses_constraints_when_grammar_is_disabled(engine: sgl.Engine) -> None:
    import dataclasses

    from sgl.core.request_manager import GenerateInput, RequestManager

    limits = dataclasses.replace(engine.runtime.limits, grammar_backend="none")
    rm = RequestManager(engine.tokenizer, limits, send=lambda msg: None)
    with pytest.raises(ValueError, match=r"json_schema needs grammar-constrained decoding, which is disabled"):
        rm.prepare(GenerateInput(text="x", sampling_params={"json_schema": "{}"}))
    assert len(rm.prepare(GenerateInput(text="x", sampling_params={"max_new_tokens": 2})).reqs) == 1


def test_xgrammar_masks_special_tokens_and_allows_eos_only_at_the_end(demo_model_dir: Path) -> None:
    from sgl.core.grammar.base import GrammarKey, GrammarKind, GrammarVocab
    from sgl.core.grammar.manager import build_vocab_mask
    from sgl.core.tokenizer.tokenizer import Tokenizer
    from sgl.plugins.grammar.xgrammar_backend import XGrammarBackend

    tok = Tokenizer.from_dir(demo_model_dir)
    eos = tok.eos_token_id
    assert eos is not None
    backend = XGrammarBackend(GrammarVocab(str(demo_model_dir), 2048, (eos,)))
    grammar = backend.compile(GrammarKey(GrammarKind.JSON, json.dumps({"type": "string"})))

    class _Row:
        def fill(self, bitmask: Any, row: int) -> None:
            grammar.fill_bitmask(bitmask, row)

    quote = tok.encode('"', add_special_tokens=False)
    assert len(quote) == 1 and grammar.accept_token(quote[0])
    inside = build_vocab_mask([_Row()], 2048, "cpu")[0]  # type: ignore[list-item]
    assert all(inside[i] for i in sorted(tok.all_special_ids))  # inside a string: no special token, no EOS
    assert not grammar.accept_token(eos)
    assert grammar.accept_token(quote[0])
    assert not build_vocab_mask([_Row()], 2048, "cpu")[0][eos]  # after the closing quote EOS may end it
    assert grammar.accept_token(eos) and grammar.is_terminated()


def test_constrained_outputs_are_identical_with_overlap_scheduling(demo_model_dir: Path) -> None:
    """Chained steps sample constrained rows only after the previous token was accepted (deferred sampling)."""
    params = [{"temperature": 0.0, "max_new_tokens": 40, "regex": r"[a-z]{3,6}( [a-z]{2,5}){2,4}\."},
              {"temperature": 0.0, "max_new_tokens": 40, "ignore_eos": True},
              {"temperature": 0.0, "max_new_tokens": 40, "choices": ["alpha beta", "gamma", "delta epsilon"]}]
    prompts = ["Write words:", "Free text", "Pick one:"]
    outs = {}
    for overlap in (False, True):
        with make_engine(demo_model_dir, force_overlap_schedule=overlap) as engine:
            outs[overlap] = [(o["text"], o["output_ids"]) for o in engine.generate(prompts, params)]
            if overlap:
                assert engine.get_server_info()["overlapped_steps"] > 0
    assert outs[True] == outs[False]
    assert re.fullmatch(r"[a-z]{3,6}( [a-z]{2,5}){2,4}\.", outs[True][0][0])
    assert outs[True][2][0] in ("alpha beta", "gamma", "delta epsilon")


def test_xgrammar_batched_fill_equals_row_by_row(demo_model_dir: Path) -> None:
    """The parallel fill (xgrammar's batch matcher) writes exactly the rows the one-by-one fill writes, and only them."""
    import torch

    from sgl.core.grammar.base import GrammarKey, GrammarKind, GrammarVocab, bitmask_words
    from sgl.core.tokenizer.tokenizer import Tokenizer
    from sgl.plugins.grammar.xgrammar_backend import XGrammarBackend

    tok = Tokenizer.from_dir(demo_model_dir)
    assert tok.eos_token_id is not None
    backend = XGrammarBackend(GrammarVocab(str(demo_model_dir), 2048, (tok.eos_token_id,)))
    specs = [GrammarKey(GrammarKind.REGEX, "[a-z]+ [0-9]{2}"), GrammarKey(GrammarKind.JSON, '{"type": "integer"}'),
             GrammarKey(GrammarKind.CHOICES, json.dumps(["yes", "no"])), GrammarKey(GrammarKind.REGEX, "[0-9]+")]
    grammars = [backend.compile(k) for k in specs]
    assert grammars[0].accept_token(tok.encode("abc", add_special_tokens=False)[0])
    rows = [0, 2, 3, 5]  # rows 1 and 4 are unconstrained requests
    batched = torch.full((6, bitmask_words(2048)), -1, dtype=torch.int32)
    backend.fill_bitmasks(grammars, batched, rows)
    one_by_one = torch.full_like(batched, -1)
    for g, row in zip(grammars, rows):
        g.fill_bitmask(one_by_one, row)
    assert torch.equal(batched, one_by_one)
    assert (batched[[1, 4]] == -1).all() and not (batched[rows] == -1).all()


def test_masks_cover_the_tokenizer_and_forbid_padded_logit_columns(demo_model_dir: Path) -> None:
    """A model whose logits are wider than its tokenizer (a padded LM head): the backend's masks cover the tokenizer's
    ids only (xgrammar's fill time grows with the width), and a constrained row forbids every column past them."""
    from sgl.core.grammar.base import GrammarKey, GrammarKind, GrammarVocab
    from sgl.core.grammar.manager import GrammarManager
    from sgl.core.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(demo_model_dir)
    assert tok.eos_token_id is not None
    wide = 4 * tok.vocab_size + 7
    m = GrammarManager("xgrammar", GrammarVocab(str(demo_model_dir), wide, (tok.eos_token_id,)), 10.0)
    rg = m.start("a", GrammarKey(GrammarKind.REGEX, "[a-z ]+"))
    m.wait(10.0)
    assert m.poll() == [] and rg.ready
    mask = m.vocab_mask([rg, None], wide, "cpu", pinned=False)
    width = m._backend.mask_vocab_size  # type: ignore[union-attr]
    assert mask.shape == (2, wide) and width < wide
    assert mask[0, width:].all() and not mask[0, :width].all()  # some tokenizer ids allowed, no padded one
    assert not mask[1].any()  # the free row forbids nothing
    m.close()
