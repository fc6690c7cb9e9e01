"""x [M, K] -> (e4m3 values, fp32 scales [M, groups]) with one dynamic scale per token and ``group`` features, in one
launch: the prefill-sized twin of the rounding sgl.kernels.fp8_skinny_gemm does inline.

The torch reference (sgl.plugins.quant.fp8_math.quantize_per_token_group) makes half a dozen passes over an fp32 copy
of x (widen, pad, abs, amax, divide, clamp, narrow); at 32k prefill tokens that cost more than the fp8 GEMM saved. Here
each program reads its row group twice (the second time from cache) and writes one byte a value, with the reference's
arithmetic: scale = max(amax * fp32(1 / max), 1e-12), then x / scale (IEEE) clamped and rounded to nearest-even.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels._common import upcast_dot
from sgl.kernels.fp8_skinny_gemm import round_e4m3_in_fp32

_CHUNK = 1024  # features a program holds at once (4 KiB of fp32 over its warps)


@triton.jit
def _fp8_quant_kernel(
    x_ptr, q_ptr, s_ptr, K, group, stride_xm, stride_qm, stride_sm,
    CHUNK: tl.constexpr, FP8_MAX: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr, EXACT_CAST: tl.constexpr,
):
    """Program (row, g): group g of row ``row``, scanned in CHUNK pieces for its amax, then rounded."""
    row = tl.program_id(0)
    g = tl.program_id(1)
    start = g * group
    end = tl.minimum(start + group, K)
    amax = tl.zeros([CHUNK], dtype=tl.float32)
    for k0 in range(start, end, CHUNK):
        ks = k0 + tl.arange(0, CHUNK)
        v = tl.load(x_ptr + row * stride_xm + ks, mask=ks < end, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v))
    scale = tl.maximum(tl.max(amax, axis=0) * (1.0 / FP8_MAX), 1e-12)
    for k0 in range(start, end, CHUNK):
        ks = k0 + tl.arange(0, CHUNK)
        kmask = ks < end
        v = tl.load(x_ptr + row * stride_xm + ks, mask=kmask, other=0.0).to(tl.float32)
        q = tl.clamp(tl.math.div_rn(v, scale), -FP8_MAX, FP8_MAX)
        if EXACT_CAST:
            q = round_e4m3_in_fp32(q, FP8_MIN_NORMAL)
        tl.store(q_ptr + row * stride_qm + ks, q.to(q_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=kmask)
    tl.store(s_ptr + row * stride_sm + g, scale)


def fp8_quantize_per_token_group(
    x: torch.Tensor, group: int, dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [M, K] (float, rows contiguous) -> (``dtype`` values [M, K], fp32 scales [M, ceil(K / group)]), the values
    and scales fp8_math.quantize_per_token_group gives (``group`` >= K is per-token)."""
    m, k = x.shape
    group = min(group, k)
    groups = triton.cdiv(k, group)
    x = x if x.stride(1) == 1 else x.contiguous()
    q = torch.empty((m, k), dtype=dtype, device=x.device)
    scale = torch.empty((m, groups), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, scale
    chunk = min(_CHUNK, triton.next_power_of_2(group))
    _fp8_quant_kernel[(m, groups)](
        x, q, scale, k, group, x.stride(0), q.stride(0), scale.stride(0),
        CHUNK=chunk, FP8_MAX=float(torch.finfo(dtype).max), FP8_MIN_NORMAL=float(torch.finfo(dtype).smallest_normal),
        EXACT_CAST=upcast_dot(x), num_warps=4 if chunk >= 512 else 1,
    )
    return q, scale
