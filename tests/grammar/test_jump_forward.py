"""Jump-forward (on by default): forced text is appended without sampling; outputs stay valid, in fewer decode steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.core.engine_utils import make_engine, settled_info
from tests.grammar.schemas import SCHEMAS

# long keys and enum values: most of an instance is text the grammar forces
FORCED = {
    "type": "object",
    "properties": {
        "identification_number": {"type": "integer", "minimum": 0, "maximum": 99},
        "classification_label": {"enum": ["extraordinary_specimen", "ordinary_specimen"]},
        "description_of_the_item": {"type": "string", "maxLength": 12},
    },
    "required": ["identification_number", "classification_label", "description_of_the_item"],
    "additionalProperties": False,
}


def _run(model: Path, jump: bool, overlap: bool, params: list[dict[str, Any]]) -> tuple[list[dict], dict]:
    with make_engine(model, disable_jump_forward=not jump, force_overlap_schedule=overlap) as engine:
        outs = engine.generate([f"Item {i}:" for i in range(len(params))], params)
        return outs, settled_info(engine)


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlap"])
def test_forced_keys_are_jumped_and_outputs_validate(demo_model_dir: Path, overlap: bool) -> None:
    params = [{"json_schema": json.dumps(FORCED), "max_new_tokens": 160, "temperature": 1.0, "seed": i}
              for i in range(8)]
    outs, info = _run(demo_model_dir, True, overlap, params)
    _, base = _run(demo_model_dir, False, overlap, params)
    for out in outs:
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out["meta_info"]["finish_reason"]
        jsonschema.validate(json.loads(out["text"]), FORCED)
    assert info["jumps"] >= 2 * len(params) and info["jump_tokens"] > info["jumps"]
    assert base["jumps"] == 0
    # forced tokens take no decode step of their own
    assert info["decode_steps"] < base["decode_steps"]
    assert info["locked_tokens"] == 0 and info["request_owned_tokens"] == 0


def test_schema_corpus_stays_valid_with_jump_forward(demo_model_dir: Path) -> None:
    params = [{"json_schema": json.dumps(schema), "max_new_tokens": 256, "temperature": 1.0, "seed": k}
              for _, schema in SCHEMAS for k in range(2)]
    outs, info = _run(demo_model_dir, True, False, params)
    stopped = 0
    for i, out in enumerate(outs):
        _, schema = SCHEMAS[i // 2]
        if out["meta_info"]["finish_reason"]["type"] == "length":
            continue
        stopped += 1
        cls = jsonschema.validators.validator_for(schema)
        cls(schema, format_checker=cls.FORMAT_CHECKER).validate(json.loads(out["text"]))
    assert stopped >= 0.9 * len(outs) and info["jump_tokens"] > 0


def test_logprob_requests_and_radix_off_do_not_jump(demo_model_dir: Path) -> None:
    params = {"json_schema": json.dumps(FORCED), "max_new_tokens": 160, "temperature": 0.0}
    with make_engine(demo_model_dir) as engine:
        out = engine.generate("Item:", params, return_logprob=True)
        assert len(out["meta_info"]["output_token_logprobs"]) == out["meta_info"]["completion_tokens"]
        assert engine.get_server_info()["jumps"] == 0
    with make_engine(demo_model_dir, disable_radix_cache=True) as engine:
        engine.generate("Item:", params)
        assert engine.get_server_info()["jumps"] == 0


def test_streamed_jumps_arrive_as_cumulative_chunks_of_a_valid_instance(demo_model_dir: Path) -> None:
    """A jump appends many tokens at once: the stream shows them in one chunk, and still only ever grows."""
    params = {"json_schema": json.dumps(FORCED), "max_new_tokens": 160, "temperature": 0.0}
    with make_engine(demo_model_dir) as engine:
        full = engine.generate("Item:", params)
        chunks = list(engine.generate("Item:", params, stream=True))
        assert engine.get_server_info()["jumps"] >= 4  # two requests, two or more jumps each
    for a, b in zip(chunks, chunks[1:]):
        assert b["text"].startswith(a["text"]) and b["output_ids"][: len(a["output_ids"])] == a["output_ids"]
    assert any(len(b["output_ids"]) - len(a["output_ids"]) > 1 for a, b in zip(chunks, chunks[1:]))
    assert chunks[-1]["output_ids"] == full["output_ids"] and chunks[-1]["text"] == full["text"]
    jsonschema.validate(json.loads(full["text"]), FORCED)
