"""Tile sweep of the paged decode attention kernel at a large batch, bf16 and fp8 KV (a GPU probe).

python -m benchmarks.decode_kernel_sweep [BATCH CONTEXT]   (Llama-3.1-8B heads: 32 query, 8 KV, head_dim 128)
Prints one JSON line per (kv dtype, block_n, num_warps, num_stages): microseconds per call and GB/s of KV read.
"""

from __future__ import annotations

import json
import sys

import torch

from sgl.kernels.decode_attn import decode_attention, decode_workspace


def main(batch: int, context: int) -> None:
    dev = torch.device("cuda")
    heads, kv_heads, dim = 32, 8, 128
    slots = batch * context + 1
    q = torch.randn(batch, heads, dim, device=dev, dtype=torch.bfloat16)
    req_to_token = torch.randperm(slots - 1, device=dev).add_(1).view(batch, context)
    idx = torch.arange(batch, device=dev)
    lens = torch.full((batch,), context, device=dev, dtype=torch.int64)
    ws = decode_workspace(lens, heads, kv_heads, dim)
    for dtype in (torch.bfloat16, torch.float8_e4m3fn):
        k = torch.randn(slots, kv_heads, dim, device=dev).to(dtype)
        v = torch.randn(slots, kv_heads, dim, device=dev).to(dtype)
        ref = decode_attention(q, k, v, req_to_token, idx, lens, 0.088, ws)
        kv_bytes = 2 * batch * context * kv_heads * dim * k.element_size()
        for block_n in (32, 64, 128):
            for warps in (2, 4, 8):
                for stages in (1, 2, 3):
                    def call(k: torch.Tensor = k, v: torch.Tensor = v, block_n: int = block_n, warps: int = warps,
                             stages: int = stages) -> torch.Tensor:
                        return decode_attention(q, k, v, req_to_token, idx, lens, 0.088, ws, block_n=block_n,
                                                num_warps=warps, num_stages=stages)
                    try:
                        out = call()
                    except Exception as exc:  # noqa: BLE001  (a tile that does not fit is skipped, not fatal)
                        print(json.dumps({"kv": str(dtype), "block_n": block_n, "error": type(exc).__name__}))
                        continue
                    assert torch.allclose(out.float(), ref.float(), atol=2e-2), (block_n, warps, stages)
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    for _ in range(3):
                        call()
                    start.record()
                    for _ in range(20):
                        call()
                    end.record()
                    torch.cuda.synchronize()
                    us = start.elapsed_time(end) / 20 * 1e3
                    print(json.dumps({"kv": str(dtype).replace("torch.", ""), "block_n": block_n, "warps": warps,
                                      "stages": stages, "us": round(us, 1), "gb_s": round(kv_bytes / us / 1e3)}),
                          flush=True)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(*(args or [384, 1536]))
