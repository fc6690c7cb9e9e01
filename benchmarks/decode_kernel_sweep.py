"""Tile sweep of the paged decode attention kernel at a large batch, bf16 and fp8 KV (a GPU probe).

python -m benchmarks.decode_kernel_sweep [BATCH CONTEXT] [--small]   (Llama-3.1-8B heads: 32 query, 8 KV, head_dim 128)
Prints one JSON line per (kv dtype, widening, block_n, num_warps, num_stages): microseconds per call and GB/s of KV read.
"""

from __future__ import annotations

import json
import sys

import torch

from sgl.kernels.decode_attn import decode_attention, decode_workspace


def small_batch_splits() -> None:
    """Batch-1 and batch-4 device time of decode attention (both kernels, profiler) against the split length."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device("cuda")
    heads, kv_heads, dim = 32, 8, 128
    for batch, context in ((1, 256), (1, 1024), (4, 512)):
        slots = batch * context + 1
        q = torch.randn(batch, heads, dim, device=dev, dtype=torch.bfloat16)
        k = torch.randn(slots, kv_heads, dim, device=dev, dtype=torch.bfloat16)
        v = torch.randn(slots, kv_heads, dim, device=dev, dtype=torch.bfloat16)
        r2t = torch.arange(1, slots, device=dev).view(batch, context)
        idx = torch.arange(batch, device=dev)
        lens = torch.full((batch,), context, device=dev, dtype=torch.int64)
        for per_split in (32, 64, 128, 256):
            ws = decode_workspace(lens, heads, kv_heads, dim, min_tokens_per_split=per_split)
            for _ in range(3):
                decode_attention(q, k, v, r2t, idx, lens, 0.088, ws)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    decode_attention(q, k, v, r2t, idx, lens, 0.088, ws)
                torch.cuda.synchronize()
            us = sum(e.device_time_total for e in prof.key_averages()) / 20
            print(json.dumps({"batch": batch, "context": context, "min_tokens_per_split": per_split,
                              "splits": int(ws.num_kv_splits[0]), "device_us": round(us, 2)}), flush=True)


def main(batch: int, context: int) -> None:
    dev = torch.device("cuda")
    heads, kv_heads, dim = 32, 8, 128
    slots = batch * context + 1
    q = torch.randn(batch, heads, dim, device=dev, dtype=torch.bfloat16)
    req_to_token = torch.randperm(slots - 1, device=dev).add_(1).view(batch, context)
    idx = torch.arange(batch, device=dev)
    lens = torch.full((batch,), context, device=dev, dtype=torch.int64)
    ws = decode_workspace(lens, heads, kv_heads, dim)
    # fp16: an fp8 cache widened to fp16 (one hardware conversion per two values), else to q's bf16 (via fp32)
    small = {"block_n": (64,), "warps": (2, 4), "stages": (2, 3)}
    wide = {"block_n": (32, 64, 128), "warps": (1, 2, 4), "stages": (2, 3, 4, 5)}
    variants = [(torch.bfloat16, False, small), (torch.float8_e4m3fn, False, small),
                (torch.float8_e4m3fn, True, wide), (torch.float8_e5m2, True, small)]
    for dtype, fp16, grid in variants:
        k = torch.randn(slots, kv_heads, dim, device=dev).to(dtype)
        v = torch.randn(slots, kv_heads, dim, device=dev).to(dtype)
        ref = decode_attention(q, k, v, req_to_token, idx, lens, 0.088, ws, fp8_as_fp16=False)
        kv_bytes = 2 * batch * context * kv_heads * dim * k.element_size()
        for block_n in grid["block_n"]:
            for warps in grid["warps"]:
                for stages in grid["stages"]:
                    def call(k: torch.Tensor = k, v: torch.Tensor = v, block_n: int = block_n, warps: int = warps,
                             stages: int = stages, fp16: bool = fp16) -> torch.Tensor:
                        return decode_attention(q, k, v, req_to_token, idx, lens, 0.088, ws, block_n=block_n,
                                                num_warps=warps, num_stages=stages, fp8_as_fp16=fp16)
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
                    print(json.dumps({"kv": str(dtype).replace("torch.", ""), "fp16": fp16, "block_n": block_n, "warps": warps,
                                      "stages": stages, "us": round(us, 1), "gb_s": round(kv_bytes / us / 1e3)}),
                          flush=True)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3] if a.isdigit()]
    if "--small" in sys.argv:
        small_batch_splits()
    else:
        main(*(args or [384, 1536]))
