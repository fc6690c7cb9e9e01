"""The ROCm platform forced onto an NVIDIA GPU: greedy tokens must equal the CUDA platform's (a GPU check).

python -m benchmarks.rocm_on_nvidia [demo llama-3.1-8b ...] [--json PATH]

A HIP build of torch answers the same ``torch.cuda`` API as a CUDA build, so the rocm platform's own code (its
probing, capabilities, memory, streams, graph hooks, its choice of attention backend and its Triton path) can run on
an NVIDIA GPU once the test-only override ``SGL_TEST_ROCM_ON_CUDA=1`` lets it past the HIP check. Each model is
served greedily by ``--backend cuda`` and by ``--backend rocm --attention-backend triton``, with decode graphs on and
off; the tokens must be identical. What this shows: the rocm platform drives the engine correctly through the shared
Triton kernels, graph runner and GEMM method. What it does not show: anything about AMD hardware, HIP, RCCL, aiter,
or the fnuz FP8 path (see docs/hardware.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

import sgl
from sgl.core.demo_model import ensure_demo_model

PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived a",
    "def fibonacci(n):",
    "Numbers: 1, 2, 3, 4, 5, 6, 7,",
]
IDS = [list(range(100 + 7 * i, 164 + 7 * i)) for i in range(4)] + [[1000 + j for j in range(300)]]
GREEDY = {"temperature": 0.0, "max_new_tokens": 48, "ignore_eos": True}
VARIANTS: dict[str, dict[str, Any]] = {"graphs": {}, "eager": {"disable_cuda_graph": True}}


def _greedy(model: str, backend: str, variant: dict[str, Any]) -> tuple[list[list[int]], dict[str, Any]]:
    demo = model == "demo"
    path = str(ensure_demo_model()) if demo else model  # NOTE: a shipped config name, with dummy weights
    kw: dict[str, Any] = {"backend": backend, "dtype": "bfloat16", "context_length": 2048, "max_total_tokens": 32768,
                          "max_running_requests": 16, "load_format": "auto" if demo else "dummy", **variant}
    if backend == "rocm":
        kw["attention_backend"] = "triton"
    with sgl.Engine(model_path=path, **kw) as e:
        outs = e.generate(PROMPTS, GREEDY) if demo else e.generate(input_ids=IDS, sampling_params=GREEDY)
        info = e.get_server_info()
    return [o["output_ids"] for o in outs], info


def main(models: list[str], out_json: str | None) -> int:
    if not torch.cuda.is_available() or torch.version.hip is not None:
        print("needs an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    os.environ["SGL_TEST_ROCM_ON_CUDA"] = "1"  # NOTE: the test-only HIP override, before any engine is built
    rows, ok = [], True
    for model in models:
        for name, variant in VARIANTS.items():
            want, cuda_info = _greedy(model, "cuda", variant)
            got, rocm_info = _greedy(model, "rocm", variant)
            same = got == want
            ok &= same
            first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
            rows.append({"model": model, "variant": name, "identical": same,
                         "first_differing_request": first, "requests": len(want),
                         "tokens": sum(len(t) for t in want),
                         "rocm_platform": rocm_info.get("platform"),
                         "rocm_attention": rocm_info.get("attention_backend"),
                         "cuda_attention": cuda_info.get("attention_backend")})
            print(f"{model:14s} {name:7s} {'identical' if same else 'DIFFERENT'}  "
                  f"({rows[-1]['tokens']} tokens; rocm platform={rows[-1]['rocm_platform']} "
                  f"attention={rows[-1]['rocm_attention']}; cuda attention={rows[-1]['cuda_attention']})", flush=True)
    if out_json:
        with open(out_json, "w", encoding="utf-8") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "rows": rows}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["demo", "llama-3.1-8b"])
    parser.add_argument("--json", dest="out_json", default=None)
    ns = parser.parse_args()
    sys.exit(main(ns.models, ns.out_json))
