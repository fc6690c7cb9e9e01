"""Batch-1 decode speed of real architectures with dummy weights, graphs and overlap on and off (a GPU probe).

python benchmarks/decode_speed.py [qwen3-0.6b llama-3.1-8b ...] [--variant graphs+overlap]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sgl
from sgl.core.demo_model import ensure_demo_model

CONFIGS = Path(__file__).resolve().parents[1] / "sgl" / "core" / "model" / "configs"


def model_dir(name: str) -> str:
    d = Path(tempfile.mkdtemp(prefix=f"sgl-{name}-"))
    shutil.copy(CONFIGS / f"{name}.json", d / "config.json")
    demo = ensure_demo_model()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / f, d / f)
    return str(d)


def batch1_decode_tok_s(engine: sgl.Engine, new_tokens: int = 256, **generate_kw: Any) -> float:
    """Batch-1 decode tok/s on a 128-token prompt, best of 3: the prefill (timed alone) is taken out of each run."""
    prompt = list(range(100, 228))
    sp = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
    engine.generate(input_ids=prompt, sampling_params=sp, **generate_kw)  # warm-up
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        engine.generate(input_ids=prompt, sampling_params={**sp, "max_new_tokens": 1}, **generate_kw)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        engine.generate(input_ids=prompt, sampling_params=sp, **generate_kw)
        total = time.perf_counter() - t
        best = max(best, (new_tokens - 1) / max(total - prefill, 1e-9))
    return best


def run(name: str, new_tokens: int = 256, **kw: object) -> dict[str, float]:
    path = model_dir(name)
    t0 = time.time()
    with sgl.Engine(model_path=path, load_format="dummy", context_length=4096, max_total_tokens=65536,
                    max_running_requests=64, **kw) as e:  # type: ignore[arg-type]
        built = time.time() - t0
        return {"build_s": round(built, 1), "decode_tok_s": round(batch1_decode_tok_s(e, new_tokens), 1)}


if __name__ == "__main__":
    argv = sys.argv[1:]
    only = argv[argv.index("--variant") + 1] if "--variant" in argv else None
    names = [a for a in argv if not a.startswith("--") and a != only] or ["qwen3-0.6b", "llama-3.1-8b"]
    variants = {"graphs+overlap": {}, "graphs": {"disable_overlap_schedule": True},
                "eager": {"disable_cuda_graph": True, "disable_overlap_schedule": True}}
    if only is not None:
        variants = {only: variants[only]}
    for name in names:
        for label, kw in variants.items():
            print(json.dumps({"model": name, "variant": label, **run(name, **kw)}), flush=True)
