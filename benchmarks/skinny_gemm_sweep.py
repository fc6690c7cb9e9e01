"""Small-M GEMMs of real models' decode steps: the vendor GEMM (F.linear) against sgl's weight-streaming kernel
over its tiles (a GPU probe).

python -m benchmarks.skinny_gemm_sweep [M ...]   (default M = 1)
Each timing replays a CUDA graph of 10 calls, so launch gaps are not counted; GB/s is w's bytes over the time.
Prints one JSON line per (shape, M): F.linear, the default config, and the best of the sweep.
"""

from __future__ import annotations

import itertools
import json
import sys

import torch
import torch.nn.functional as F

from sgl.kernels.skinny_gemm import SkinnyConfig, skinny_config, skinny_gemm

SHAPES = {  # name: (N, K)
    "llama8b.qkv": (6144, 4096), "llama8b.o": (4096, 4096), "llama8b.gate_up": (28672, 4096),
    "llama8b.down": (4096, 14336), "llama8b.lm_head": (128256, 4096),
    "qwen3-0.6b.qkv": (4096, 1024), "qwen3-0.6b.o": (1024, 2048), "qwen3-0.6b.gate_up": (6144, 1024),
    "qwen3-0.6b.down": (1024, 3072),
}


def graph_us(fn: object, calls: int = 10) -> float:
    fn()  # type: ignore[operator]
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()  # type: ignore[operator]
    g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        g.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[2]


def main(ms: list[int]) -> None:
    dev = torch.device("cuda")
    grid = [SkinnyConfig(bn, bk, split, warps, stages)
            for bn, bk, split, warps, stages in itertools.product((16, 32, 64), (128, 256), (1, 2, 4, 8), (4, 8), (3, 4))]
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        for m in ms:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            ref = F.linear(x, w)
            vendor = graph_us(lambda x=x, w=w: F.linear(x, w))
            default = skinny_config(n, k, dev)
            results = {}
            for cfg in [default, *grid]:
                if k // cfg.split_k < cfg.block_k or cfg in results:
                    continue
                y = skinny_gemm(x, w, config=cfg)
                err = (y.float() - ref.float()).abs().max().item()
                assert err <= 0.02 * ref.float().abs().max().item() + 1e-3, (name, cfg, err)
                results[cfg] = graph_us(lambda cfg=cfg, x=x, w=w: skinny_gemm(x, w, config=cfg))
            best = min(results, key=results.__getitem__)
            gb = n * k * 2 / 1e3
            print(json.dumps({
                "shape": name, "m": m, "f_linear_us": round(vendor, 2), "f_linear_gb_s": round(gb / vendor),
                "default": list(default), "default_us": round(results[default], 2),
                "best": list(best), "best_us": round(results[best], 2), "best_gb_s": round(gb / results[best]),
                "best_vs_f_linear": round(vendor / results[best], 3),
            }), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1])
