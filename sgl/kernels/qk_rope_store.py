"""The attention prologue in one launch: per-head q/k RMSNorm (optional), rope, q written contiguous, K/V stored.

Unfused, a decode layer runs a q norm, a k norm, the rotary kernel and the KV store (four launches, plus a copy of v
at more than one token) between the QKV GEMM and attention; at batch 1 each is a few microseconds of fixed cost for
a few kilobytes of work. Here one program handles one head of one token: a q head lands in q's output, a kv head's
k and v land in the layer's KV buffers at the token's slot.

NOTE: the arithmetic is the unfused kernels', step for step (norm.py's row statistics and rounding, rotary.py's fp32
rotation rounded to the activation dtype, kv_store.py's saturating cast), so the two paths give the same bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels._common import block_size, elementwise_warps
from sgl.kernels.pdl import launch_options, wait_for_previous

_FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2)


@triton.jit
def _to_dst(x, dst_ptr, kv_max, SATURATE: tl.constexpr):
    """x cast to the destination's element type; an fp8 KV buffer saturates first (as kv_store.py does)."""
    if SATURATE:
        x = tl.minimum(tl.maximum(x.to(tl.float32), -kv_max), kv_max)
    return x.to(dst_ptr.dtype.element_ty)


@triton.jit
def _head(
    src, dst, w_ptr, act_ptr, cos, sin, head_dim, half, eps, kv_max,
    HAS_NORM: tl.constexpr, IS_NEOX: tl.constexpr, SATURATE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
):
    """One head: src [head_dim] -> (norm) -> rope -> dst [head_dim], rounded on the way to ``act_ptr``'s type (the
    activations': q's output), as the unfused ops round their outputs."""
    act = act_ptr.dtype.element_ty
    d = tl.arange(0, BLOCK_HALF)
    hmask = d < half
    if IS_NEOX:
        i1 = d
        i2 = d + half
    else:
        i1 = 2 * d
        i2 = 2 * d + 1
    x1 = tl.load(src + i1, mask=hmask, other=0.0)
    x2 = tl.load(src + i2, mask=hmask, other=0.0)
    if HAS_NORM:
        # NOTE: the statistics over the whole row in one tl.sum, as norm.py's kernel takes them
        cols = tl.arange(0, BLOCK_D)
        row = tl.load(src + cols, mask=cols < head_dim, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(row * row, axis=0) / head_dim + eps)
        w1 = tl.load(w_ptr + i1, mask=hmask, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + i2, mask=hmask, other=0.0).to(tl.float32)
        y1 = ((x1.to(tl.float32) * rstd).to(x1.dtype).to(tl.float32) * w1).to(act)
        y2 = ((x2.to(tl.float32) * rstd).to(x2.dtype).to(tl.float32) * w2).to(act)
    else:
        y1 = x1
        y2 = x2
    f1 = y1.to(tl.float32)
    f2 = y2.to(tl.float32)
    tl.store(dst + i1, _to_dst((f1 * cos - f2 * sin).to(act), dst, kv_max, SATURATE), mask=hmask)
    tl.store(dst + i2, _to_dst((f2 * cos + f1 * sin).to(act), dst, kv_max, SATURATE), mask=hmask)
    if BLOCK_PASS > 0:
        # NOTE: features past rotary_dim are not rotated (partial rotary), but normed all the same
        p = 2 * half + tl.arange(0, BLOCK_PASS)
        pmask = p < head_dim
        xp = tl.load(src + p, mask=pmask, other=0.0)
        if HAS_NORM:
            wp = tl.load(w_ptr + p, mask=pmask, other=0.0).to(tl.float32)
            yp = ((xp.to(tl.float32) * rstd).to(xp.dtype).to(tl.float32) * wp).to(act)
        else:
            yp = xp
        tl.store(dst + p, _to_dst(yp, dst, kv_max, SATURATE), mask=pmask)


@triton.jit
def _qk_norm_rope_store_kernel(
    pos_ptr, cache_ptr, qkv_ptr, qw_ptr, kw_ptr, qo_ptr, kbuf_ptr, vbuf_ptr, loc_ptr,
    stride_qkv, stride_qo, stride_cache, stride_kslot, stride_khead, stride_vslot, stride_vhead,
    n_q_heads, n_kv_heads, head_dim, half, eps, kv_max,
    HAS_NORM: tl.constexpr, IS_NEOX: tl.constexpr, SATURATE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr, USE_PDL: tl.constexpr,
):
    wait_for_previous(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)
    cos = tl.load(cache_ptr + pos * stride_cache + d, mask=d < half, other=0.0).to(tl.float32)
    sin = tl.load(cache_ptr + pos * stride_cache + half + d, mask=d < half, other=0.0).to(tl.float32)
    row = qkv_ptr + t * stride_qkv
    if h < n_q_heads:
        _head(row + h * head_dim, qo_ptr + t * stride_qo + h * head_dim, qw_ptr, qo_ptr, cos, sin, head_dim, half, eps,
              kv_max, HAS_NORM, IS_NEOX, False, BLOCK_D, BLOCK_HALF, BLOCK_PASS)
    else:
        kh = h - n_q_heads
        slot = tl.load(loc_ptr + t).to(tl.int64)
        k_src = row + (n_q_heads + kh) * head_dim
        _head(k_src, kbuf_ptr + slot * stride_kslot + kh * stride_khead, kw_ptr, qo_ptr, cos, sin, head_dim, half, eps,
              kv_max, HAS_NORM, IS_NEOX, SATURATE, BLOCK_D, BLOCK_HALF, BLOCK_PASS)
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < head_dim
        v = tl.load(row + (n_q_heads + n_kv_heads + kh) * head_dim + cols, mask=cmask, other=0.0)
        vdst = vbuf_ptr + slot * stride_vslot + kh * stride_vhead
        tl.store(vdst + cols, _to_dst(v, vdst, kv_max, SATURATE), mask=cmask)


def qk_norm_rope_store_kv(
    positions: torch.Tensor,
    qkv: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    eps: float,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    loc: torch.Tensor,
) -> torch.Tensor:
    """Same contract as ``sgl.core.ops.reference.qk_norm_rope_store_kv``; one launch of T x (H + KVH) programs."""
    rotary_dim = cos_sin_cache.shape[-1]
    if rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and at most head_dim {head_dim}")
    if (q_norm_weight is None) != (k_norm_weight is None):
        raise ValueError("q and k head norms come together: give both weights or neither")
    has_norm = q_norm_weight is not None and k_norm_weight is not None
    if has_norm and q_norm_weight.dtype != k_norm_weight.dtype:  # type: ignore[union-attr]
        raise ValueError("q and k head norm weights must share one dtype")
    if qkv.shape[-1] != (num_heads + 2 * num_kv_heads) * head_dim or qkv.stride(-1) != 1:
        raise ValueError(f"qkv must be [T, {(num_heads + 2 * num_kv_heads) * head_dim}] with contiguous rows")
    if tuple(k_buffer.shape[1:]) != (num_kv_heads, head_dim) or tuple(v_buffer.shape[1:]) != (num_kv_heads, head_dim):
        raise ValueError(f"K/V buffers must be [slots, {num_kv_heads}, {head_dim}]")
    if k_buffer.stride(-1) != 1 or v_buffer.stride(-1) != 1 or k_buffer.dtype != v_buffer.dtype:
        raise ValueError("K/V buffers need contiguous heads and one dtype")
    act = torch.promote_types(qkv.dtype, q_norm_weight.dtype) if has_norm else qkv.dtype  # type: ignore[union-attr]
    n_tokens = qkv.shape[0]
    q = torch.empty((n_tokens, num_heads * head_dim), dtype=act, device=qkv.device)
    if n_tokens == 0:
        return q
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    half, n_pass = rotary_dim // 2, head_dim - rotary_dim
    saturate = k_buffer.dtype in _FP8
    block_d = block_size(head_dim)
    # NOTE: without norms the weight pointers are never read; qkv stands in so the launch has a tensor there
    qw = q_norm_weight if has_norm else qkv
    kw = k_norm_weight if has_norm else qkv
    _qk_norm_rope_store_kernel[(n_tokens, num_heads + num_kv_heads)](
        positions, cache, qkv, qw, kw, q, k_buffer, v_buffer, loc,
        qkv.stride(0), q.stride(0), cache.stride(0),
        k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        num_heads, num_kv_heads, head_dim, half, float(eps),
        float(torch.finfo(k_buffer.dtype).max) if saturate else 0.0,
        HAS_NORM=has_norm, IS_NEOX=is_neox, SATURATE=saturate,
        BLOCK_D=block_d, BLOCK_HALF=block_size(half), BLOCK_PASS=block_size(n_pass) if n_pass else 0,
        num_warps=elementwise_warps(block_d), **launch_options(qkv),
    )
    return q
