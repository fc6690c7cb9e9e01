"""Constrained vs unconstrained decode throughput at batch 1 and 32, the host time per constrained token, and
jump-forward on vs off for a JSON schema whose keys and enum values the grammar forces.

python -m benchmarks.grammar_speed [MODEL]   (a shipped config name with dummy weights; default llama-3.1-8b;
                                              "demo" for the demo model on whatever platform is available)
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import sgl
from benchmarks.decode_speed import model_dir

NEW = 128
# A constraint that never forces an early end: lower-case words and spaces, up to the token budget.
REGEX = "[a-z ]+"
# long keys and enum values: much of an instance is forced text, which jump-forward appends without sampling
FORCED_SCHEMA = json.dumps({
    "type": "object",
    "properties": {
        "identification_number": {"type": "integer", "minimum": 0, "maximum": 999},
        "classification_label": {"enum": ["extraordinary_specimen", "ordinary_specimen"]},
        "description_of_the_item": {"type": "string", "maxLength": 24},
        "measurements_in_millimetres": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999},
                                        "maxItems": 3},
    },
    "required": ["identification_number", "classification_label", "description_of_the_item",
                 "measurements_in_millimetres"],
    "additionalProperties": False,
})


def throughput(engine: sgl.Engine, batch: int, constrained: bool) -> float:
    sp: dict[str, Any] = {"max_new_tokens": NEW, "temperature": 0.0, "ignore_eos": True}
    if constrained:
        sp["regex"] = REGEX
    prompts = [[100 + i, 200 + i, 300 + i, 400 + i] for i in range(batch)]
    engine.generate(input_ids=prompts, sampling_params=sp)  # warm-up (and the grammar compile cache)
    t0 = time.perf_counter()
    outs = engine.generate(input_ids=prompts, sampling_params=sp)
    dt = time.perf_counter() - t0
    return sum(o["meta_info"]["completion_tokens"] for o in outs) / dt


def json_batch_seconds(engine: sgl.Engine, batch: int) -> tuple[float, float]:
    """Wall time of a batch of FORCED_SCHEMA requests (median of 3) and the mean output tokens per request."""
    sp = {"max_new_tokens": 256, "temperature": 0.0, "json_schema": FORCED_SCHEMA}
    prompts = [[100 + i, 200 + i, 300 + i] for i in range(batch)]
    engine.generate(input_ids=prompts, sampling_params=sp)  # warm-up
    times, tokens = [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=sp)
        times.append(time.perf_counter() - t0)
        for o in outs:
            if o["meta_info"]["finish_reason"]["type"] == "stop":
                json.loads(o["text"])  # a finished output is a complete instance
        tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return sorted(times)[1], tokens / batch


def main(name: str) -> None:
    kw: dict[str, Any] = {"max_total_tokens": 65536, "context_length": 4096, "max_running_requests": 64,
                          "force_overlap_schedule": "--overlap" in sys.argv}
    if name != "demo":
        kw.update(model_path=model_dir(name), load_format="dummy")
    json_s: dict[bool, dict[int, tuple[float, float]]] = {}
    with sgl.Engine(**kw, disable_jump_forward=True) as engine:
        for batch in (1, 32):
            free = throughput(engine, batch, False)
            cons = throughput(engine, batch, True)
            print(json.dumps({"model": name, "batch": batch, "unconstrained_tok_s": round(free, 1),
                              "constrained_tok_s": round(cons, 1), "ratio": round(cons / free, 3)}), flush=True)
        info = engine.get_server_info()
        print(json.dumps({"grammar_mask_us_per_token": info["grammar_mask_us_per_token"]}))
        json_s[False] = {b: json_batch_seconds(engine, b) for b in (1, 32)}
    for mixed in (False, True):  # a jump re-enters prefill: mixed chunks let the other decodes ride along
        with sgl.Engine(**kw, enable_mixed_chunk=mixed) as engine:
            json_on = {b: json_batch_seconds(engine, b) for b in (1, 32)}
            info = engine.get_server_info()
        for b in (1, 32):
            (off, off_tok), (on, on_tok) = json_s[False][b], json_on[b]
            print(json.dumps({"model": name, "json_batch": b, "mixed_chunk": mixed, "jump_forward_off_s": round(off, 3),
                              "jump_forward_on_s": round(on, 3), "speedup": round(off / on, 2),
                              "tokens_per_request_off": off_tok, "tokens_per_request_on": on_tok,
                              "jumps": info["jumps"], "jump_tokens": info["jump_tokens"]}), flush=True)


if __name__ == "__main__":
    main(next((a for a in sys.argv[1:] if not a.startswith("-")), "llama-3.1-8b"))
