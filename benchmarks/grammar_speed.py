"""Constrained vs unconstrained decode throughput at batch 1 and 32, and the host time per constrained token.

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


def main(name: str) -> None:
    kw: dict[str, Any] = {"max_total_tokens": 65536, "context_length": 4096, "max_running_requests": 64,
                          "force_overlap_schedule": "--overlap" in sys.argv}
    if name != "demo":
        kw.update(model_path=model_dir(name), load_format="dummy")
    with sgl.Engine(**kw) as engine:
        for batch in (1, 32):
            free = throughput(engine, batch, False)
            cons = throughput(engine, batch, True)
            print(json.dumps({"model": name, "batch": batch, "unconstrained_tok_s": round(free, 1),
                              "constrained_tok_s": round(cons, 1), "ratio": round(cons / free, 3)}), flush=True)
        info = engine.get_server_info()
        print(json.dumps({"grammar_mask_us_per_token": info["grammar_mask_us_per_token"]}))


if __name__ == "__main__":
    main(next((a for a in sys.argv[1:] if not a.startswith("-")), "llama-3.1-8b"))
