"""Strict JSON: a JSON-schema output never holds a raw control character (RFC 8259), whichever backend runs, even
at temperature 1 on random weights with free strings, unbounded integers and nested arrays; an output that
max_new_tokens cuts short says so with finish_reason "length"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

import sgl
from sgl.core.grammar.strict_json import ControlTokenMask, has_control_char
from sgl.core.tokenizer.tokenizer import Tokenizer

BUDGET = 48
SAMPLES = 6
FREE: list[tuple[str, dict[str, Any]]] = [
    ("free_string", {"type": "string"}),
    ("object_free_strings", {"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": "string"}},
                             "required": ["ok", "note"]}),
    ("unbounded_integer", {"type": "integer"}),
    ("unbounded_number", {"type": "number"}),
    ("nested_arrays", {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}),
    ("nested_string_arrays", {"type": "array", "items": {"type": "array", "items": {"type": "string"}},
                              "maxItems": 2}),
    ("any_object", {"type": "object"}),
    ("string_map", {"type": "object", "additionalProperties": {"type": "string"}}),
    ("pattern_any", {"type": "string", "pattern": ".*"}),
    ("any_value", {}),
]


def test_free_schemas_at_temperature_1_never_emit_control_characters_and_cut_outputs_say_length(
    engine: sgl.Engine,
) -> None:
    prompts, params = [], []
    for name, schema in FREE:
        for k in range(SAMPLES):
            prompts.append(f"{name} {k}: \x10 \n")
            params.append({"json_schema": json.dumps(schema), "max_new_tokens": BUDGET, "temperature": 1.0,
                           "seed": 1000 + k})
    outs = engine.generate(prompts, params)
    stopped = 0
    for i, out in enumerate(outs):
        name, schema = FREE[i // SAMPLES]
        text, reason = out["text"], out["meta_info"]["finish_reason"]
        assert not has_control_char(text), (name, text)
        if reason["type"] == "length":
            assert out["meta_info"]["completion_tokens"] == BUDGET, (name, reason)
            if text[:1] in ('{', '[', '"'):  # NOTE: a cut number is still a number; finish_reason tells
                with pytest.raises(json.JSONDecodeError):
                    json.loads(text)
            continue
        assert reason["type"] == "stop", (name, reason)
        stopped += 1
        jsonschema.validate(json.loads(text, strict=True), schema)
    assert stopped >= len(FREE)  # the corpus really produced complete outputs too


def test_control_token_mask_forbids_exactly_the_tokens_holding_control_characters(demo_model_dir: Path) -> None:
    tok = Tokenizer.from_dir(demo_model_dir)
    mask = ControlTokenMask(tok.decode, tok.vocab_size + 3)  # NOTE: padded logits columns have no text
    host = mask.host()
    expected = [has_control_char(tok.decode([i])) for i in range(tok.vocab_size)] + [False] * 3
    assert host.tolist() == expected
    assert 0 < int(host.sum()) < tok.vocab_size  # the byte-level vocabulary has such tokens (\x10, \n, ...)
    forbidden = torch.zeros(3, tok.vocab_size + 3, dtype=torch.bool)
    out = mask.apply(forbidden, [1])
    assert out[1].tolist() == host.tolist()
    assert not out[0].any() and not out[2].any()
