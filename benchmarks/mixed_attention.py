"""One layer's attention of a MIXED step: a prompt chunk plus running decodes, the decodes attended by the extend
kernel (before b4cb0af) or by the split-KV decode kernel (TritonAttnBackend now). A GPU probe (issue 23).

python -m benchmarks.mixed_attention [CHUNK CONTEXT]   (Llama-3.1-8B heads: 32 query, 8 KV, head_dim 128, bf16)
Prints one JSON line per decode batch size: microseconds per layer call both ways (CUDA events, 50 calls after 5
warm-up calls), x32 layers for a step's total, and the largest difference between the two outputs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import torch

from sgl.kernels.decode_attn import decode_attention, decode_workspace
from sgl.kernels.extend_attn import extend_attention

HEADS, KV_HEADS, DIM, LAYERS = 32, 8, 128, 32


def _time_us(fn: Callable[[], torch.Tensor], calls: int = 50) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / calls


def mixed_layer(
    chunk: int, context: int, decodes: int, dev: torch.device, dt: torch.dtype = torch.bfloat16
) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """(old, new): one layer's attention of a MIXED batch, the decodes in the extend kernel / in the decode kernel.

    Request 0 adds ``chunk`` new tokens over no prefix; each of ``decodes`` others one token over ``context - 1``."""
    batch = 1 + decodes
    prefix = [0] + [context - 1] * decodes
    ext = [chunk] + [1] * decodes
    seq = [p + e for p, e in zip(prefix, ext)]
    width = max(seq)
    slots = batch * width + 1
    k = torch.randn(slots, KV_HEADS, DIM, device=dev, dtype=dt)
    v = torch.randn(slots, KV_HEADS, DIM, device=dev, dtype=dt)
    r2t = torch.arange(1, slots, device=dev, dtype=torch.int32).view(batch, width)
    idx = torch.arange(batch, device=dev)
    tokens = sum(ext)
    q = torch.randn(tokens, HEADS * DIM, device=dev, dtype=dt)
    p_t, e_t = torch.tensor(prefix, device=dev), torch.tensor(ext, device=dev)
    s_t = torch.tensor([sum(ext[:i]) for i in range(batch)], device=dev)
    lens = torch.tensor(seq, device=dev)
    scale = DIM**-0.5
    out_new = torch.empty(tokens, HEADS, DIM, device=dev, dtype=dt)
    ws = decode_workspace(lens[1:], HEADS, KV_HEADS, DIM)

    def old() -> torch.Tensor:
        return extend_attention(q, k, v, r2t, idx, p_t, e_t, s_t, chunk, scale)

    def new() -> torch.Tensor:
        extend_attention(q[:chunk], k, v, r2t, idx[:1], p_t[:1], e_t[:1], s_t[:1], chunk, scale, out=out_new[:chunk])
        decode_attention(q[chunk:], k, v, r2t, idx[1:], lens[1:], scale, workspace=ws, out=out_new[chunk:])
        return out_new

    return old, new


def main(chunk: int = 512, context: int = 1152) -> None:
    for decodes in (32, 64, 96, 128, 192):
        old, new = mixed_layer(chunk, context, decodes, torch.device("cuda"))
        diff = (old().float() - new().float()).abs().max().item()
        t_old, t_new = _time_us(old), _time_us(new)
        print(json.dumps({"chunk": chunk, "context": context, "decodes": decodes, "extend_only_us": round(t_old, 1),
                          "split_us": round(t_new, 1), "step_ms_saved": round((t_old - t_new) * LAYERS / 1e3, 2),
                          "max_abs_diff": diff}), flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
