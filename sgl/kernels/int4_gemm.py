"""y = x @ dequant(W).T for 4-bit AWQ (GEMM layout) and GPTQ weights, read in their checkpoint layouts (W4A16).

Each K-step unpacks a [BLOCK_K, BLOCK_N] tile of nibbles, subtracts its group's zero and multiplies by its group's
scale (looked up per input row through ``g_idx``, so GPTQ's act order needs no repacking), then runs one tensor-core
dot in the activations' dtype. Decode (a handful of rows) uses 16-row tiles and a split K: the weight streams once
at half a byte a value, and the splits' fp32 partials are summed in a fixed order as in sgl.kernels.skinny_gemm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sgl.kernels._common import upcast_dot
from sgl.kernels.skinny_gemm import MAX_ROWS, skinny_config, split_output, sum_splits


class Int4GemmConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


@triton.jit
def awq_shift(cols):
    # NOTE: AutoAWQ packs columns (0, 2, 4, 6, 1, 3, 5, 7) of each eight into nibbles 0..7: column c is nibble
    # c // 2 + 4 * (c % 2).
    c = cols % 8
    return (c // 2 + 4 * (c % 2)) * 4


@triton.jit
def _int4_gemm_kernel(
    x_ptr, qw_ptr, qz_ptr, s_ptr, g_ptr, out_ptr, bias_ptr,
    M, N, K, k_per_split, group_size, zero_offset,
    stride_xm, stride_qw, stride_qz, stride_s, stride_os, stride_om,
    AWQ: tl.constexpr, HAS_G_IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    if AWQ:
        shift_n = awq_shift(cols)
    else:
        shift_n = (cols % 8) * 4
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < k_end
        tile_mask = kmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        if AWQ:
            words = tl.load(qw_ptr + ks[:, None] * stride_qw + (cols // 8)[None, :], mask=tile_mask, other=0)
            q = (words >> shift_n[None, :]) & 0xF
        else:
            words = tl.load(qw_ptr + (ks // 8)[:, None] * stride_qw + cols[None, :], mask=tile_mask, other=0)
            q = (words >> ((ks % 8) * 4)[:, None]) & 0xF
        if HAS_G_IDX:
            g = tl.load(g_ptr + ks, mask=kmask, other=0)
        else:
            g = ks // group_size
        zw = tl.load(qz_ptr + g[:, None] * stride_qz + (cols // 8)[None, :], mask=tile_mask, other=0)
        z = ((zw >> shift_n[None, :]) & 0xF) + zero_offset
        s = tl.load(s_ptr + g[:, None] * stride_s + cols[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        w = (q - z).to(tl.float32) * s
        if UPCAST:
            x = x.to(tl.float32)
        else:
            w = w.to(x.dtype)
        acc += tl.dot(x, w)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + split * stride_os + rows[:, None] * stride_om + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


def int4_gemm_config(m: int, n: int, k: int, device: torch.device) -> Int4GemmConfig:
    if m <= MAX_ROWS:
        return Int4GemmConfig(MAX_ROWS, 64, 128, skinny_config(n, k, device).split_k, 4, 3)
    return Int4GemmConfig(64, 128, 64, 1, 4, 3)


def int4_gemm(
    x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
    awq: bool, zero_offset: int = 0, g_idx: torch.Tensor | None = None, bias: torch.Tensor | None = None,
    config: Int4GemmConfig | None = None,
) -> torch.Tensor:
    """``x`` [M, K] times the 4-bit weight -> [M, N] in x's dtype.

    AWQ: ``qweight`` [K, N/8] (interleaved nibbles); GPTQ: ``qweight`` [K/8, N]. Both: ``qzeros`` [groups, N/8],
    ``scales`` [groups, N]; the group of input row k is ``g_idx[k]`` when given, else ``k // group_size``.
    """
    m, k = x.shape
    n = scales.shape[1]
    expected = (k, n // 8) if awq else (k // 8, n)
    if tuple(qweight.shape) != expected:
        raise ValueError(f"qweight {tuple(qweight.shape)} does not match x's {k} columns and {n} outputs")
    x = x if x.stride(1) == 1 else x.contiguous()
    cfg = config or int4_gemm_config(m, n, k, x.device)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    parts = split_output(y, k, cfg.split_k, cfg.block_k)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), cfg.split_k)
    _int4_gemm_kernel[grid](
        x, qweight, qzeros, scales, g_idx if g_idx is not None else qzeros, parts.out,
        bias if bias is not None else y, m, n, k, parts.k_per_split, group_size, zero_offset,
        x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), parts.stride_os, parts.stride_om,
        AWQ=awq, HAS_G_IDX=g_idx is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        UPCAST=upcast_dot(x) or x.dtype == torch.float32, HAS_BIAS=parts.direct and bias is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return sum_splits(parts, y, bias)
