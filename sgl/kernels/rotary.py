"""Rotary position embedding for q and k in one launch: neox (halves) or interleaved (pairs), partial rotary."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels._common import block_size, rows_2d
from sgl.kernels.pdl import launch_options, wait_for_previous


@triton.jit
def _rotate_heads(
    src_ptr,
    dst_ptr,
    cos,
    sin,
    n_heads,
    head_dim,
    half,
    IS_NEOX: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < n_heads) & (d < half)
    if IS_NEOX:
        i1 = d
        i2 = d + half
    else:
        i1 = 2 * d
        i2 = 2 * d + 1
    src = src_ptr + heads * head_dim
    x1 = tl.load(src + i1, mask=mask, other=0.0)
    x2 = tl.load(src + i2, mask=mask, other=0.0)
    f1 = x1.to(tl.float32)
    f2 = x2.to(tl.float32)
    dst = dst_ptr + heads * head_dim
    tl.store(dst + i1, (f1 * cos - f2 * sin).to(x1.dtype), mask=mask)
    tl.store(dst + i2, (f2 * cos + f1 * sin).to(x1.dtype), mask=mask)
    if BLOCK_PASS > 0:
        # NOTE: features past rotary_dim pass through unchanged (partial rotary).
        p = 2 * half + tl.arange(0, BLOCK_PASS)[None, :]
        pmask = (heads < n_heads) & (p < head_dim)
        tl.store(dst + p, tl.load(src + p, mask=pmask, other=0.0), mask=pmask)


@triton.jit
def _rotary_kernel(
    pos_ptr,
    cache_ptr,
    q_ptr,
    k_ptr,
    qo_ptr,
    ko_ptr,
    stride_q,
    stride_k,
    stride_qo,
    stride_ko,
    stride_cache,
    n_q_heads,
    n_k_heads,
    head_dim,
    half,
    IS_NEOX: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_for_previous(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)[None, :]
    cmask = d < half
    cos = tl.load(cache_ptr + pos * stride_cache + d, mask=cmask, other=0.0).to(tl.float32)
    sin = tl.load(cache_ptr + pos * stride_cache + half + d, mask=cmask, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr + t * stride_q, qo_ptr + t * stride_qo, cos, sin,
                  n_q_heads, head_dim, half, IS_NEOX, BLOCK_HQ, BLOCK_HALF, BLOCK_PASS)
    _rotate_heads(k_ptr + t * stride_k, ko_ptr + t * stride_ko, cos, sin,
                  n_k_heads, head_dim, half, IS_NEOX, BLOCK_HK, BLOCK_HALF, BLOCK_PASS)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    head_dim: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as the reference: q [T, H*D], k [T, KVH*D], cache [max_positions, rotary_dim]; new tensors out."""
    rotary_dim = cos_sin_cache.shape[-1]
    if rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and at most head_dim {head_dim}")
    q2, k2 = rows_2d(q), rows_2d(k)
    n_tokens = q2.shape[0]
    q_out = torch.empty((n_tokens, q2.shape[1]), dtype=q.dtype, device=q.device)
    k_out = torch.empty((n_tokens, k2.shape[1]), dtype=k.dtype, device=k.device)
    if n_tokens:
        cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
        half = rotary_dim // 2
        n_pass = head_dim - rotary_dim
        n_q_heads, n_k_heads = q2.shape[1] // head_dim, k2.shape[1] // head_dim
        _rotary_kernel[(n_tokens,)](
            positions, cache, q2, k2, q_out, k_out,
            q2.stride(0), k2.stride(0), q_out.stride(0), k_out.stride(0), cache.stride(0),
            n_q_heads, n_k_heads, head_dim, half,
            IS_NEOX=is_neox, BLOCK_HQ=block_size(n_q_heads), BLOCK_HK=block_size(n_k_heads),
            BLOCK_HALF=block_size(half), BLOCK_PASS=block_size(n_pass) if n_pass else 0,
            num_warps=4, **launch_options(q2),
        )
    return q_out.view(q.shape), k_out.view(k.shape)
