"""y = (a * a_scale) @ (b * b_scale).T for fp8 ``b`` (and fp8 or float ``a``), with block, per-row or per-tensor
scales: the scaled FP8 GEMM of block-wise (DeepSeek/Qwen3), per-channel and online FP8 weights.

Scales are read per K-step (BLOCK_K never straddles a scale group), so one kernel covers 128 x 128 weight blocks
with per-token-group activations as well as per-channel weights with per-token activations. For a handful of rows
(decode) the same kernel runs with 16-row tiles and a split K, streaming the weight once at one byte a value; the
splits' fp32 partials are summed in a fixed order (no atomics), as in sgl.kernels.skinny_gemm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sgl.kernels._common import upcast_dot
from sgl.kernels.skinny_gemm import MAX_ROWS, skinny_config, split_output, sum_splits


class Fp8GemmConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


@triton.jit
def _fp8_gemm_kernel(
    a_ptr, b_ptr, out_ptr, bias_ptr, sa_ptr, sb_ptr,
    M, N, K, k_per_split, a_group_k, b_group_n, b_group_k,
    stride_am, stride_bn, stride_os, stride_om, stride_sam, stride_sbn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_A_SCALE: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_FP16: tl.constexpr, HAS_BIAS: tl.constexpr, GROUP_M: tl.constexpr,
):
    # NOTE: tiles run in bands of GROUP_M row tiles, column tile by column tile within a band: a wave of programs
    # then shares a few A row tiles and B column tiles in L2. Row-major order (all row tiles of one column tile
    # first) re-read the whole of A from memory for every column tile: N / BLOCK_N times at prefill sizes.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    band = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (pid // band) * GROUP_M
    rows_in_band = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % band) % rows_in_band
    pid_n = (pid % band) // rows_in_band
    split = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < k_end
        a = tl.load(a_ptr + rows[:, None] * stride_am + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptr + cols[:, None] * stride_bn + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        if DOT_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        elif DOT_FP16:  # NOTE: every e4m3 value is exact in fp16; for GPUs without fp8 tensor cores
            a = a.to(tl.float16)
            b = b.to(tl.float16)
        else:
            b = b.to(a.dtype)
        part = tl.dot(a, tl.trans(b))
        sb = tl.load(sb_ptr + (cols // b_group_n) * stride_sbn + k0 // b_group_k, mask=cmask, other=0.0)
        if HAS_A_SCALE:
            sa = tl.load(sa_ptr + rows * stride_sam + k0 // a_group_k, mask=rmask, other=0.0)
            acc += part * sa[:, None] * sb[None, :]
        else:
            acc += part * sb[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + split * stride_os + rows[:, None] * stride_om + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


def block_k_for(k: int, groups: tuple[int, ...]) -> int:
    """The largest power-of-two K tile (16..128) that divides every scale group shorter than K."""
    block = 128
    for g in groups:
        if g < k:
            while block > 16 and g % block:
                block //= 2
            if g % block:
                raise ValueError(f"a scale group of {g} along K is not a multiple of 16")
    return block


def fp8_gemm_config(m: int, n: int, k: int, block_k: int, device: torch.device) -> Fp8GemmConfig:
    """16-row tiles with a split K for decode (weight streaming, the skinny GEMM's split rule), 64 x 128 otherwise."""
    if m <= MAX_ROWS:
        return Fp8GemmConfig(MAX_ROWS, 64, block_k, skinny_config(n, k, device).split_k, 4, 3)
    return Fp8GemmConfig(64, 128, block_k, 1, 4, 3)


def fp8_gemm(
    a: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor, b_group: tuple[int, int],
    a_scale: torch.Tensor | None = None, a_group_k: int = 0, bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None, fp16_dot: bool = False, config: Fp8GemmConfig | None = None,
) -> torch.Tensor:
    """``a`` [M, K] (fp8 with ``a_scale`` [M, K / a_group_k], or a float type without) times fp8 ``b`` [N, K] with
    ``b_scale`` [N / b_group[0], K / b_group[1]] (groups rounded up), plus ``bias`` -> [M, N] in ``out_dtype``.

    A per-row scale is a group of 1 x K, a per-tensor one a group of N x K.
    """
    m, k = a.shape
    n = b.shape[0]
    if b.shape[1] != k:
        raise ValueError(f"a has {k} columns but b has {b.shape[1]}")
    if (a_scale is None) != (a.element_size() != 1):
        raise ValueError("an fp8 a needs a_scale, and only an fp8 a takes one")
    block_k = block_k_for(k, (b_group[1], a_group_k if a_scale is not None else k))
    a = a if a.stride(1) == 1 else a.contiguous()
    out_dtype = out_dtype or (a.dtype if a_scale is None else torch.bfloat16)
    cfg = config or fp8_gemm_config(m, n, k, block_k, a.device)
    y = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0:
        return y
    parts = split_output(y, k, cfg.split_k, cfg.block_k)
    b_scale = b_scale.float().contiguous()
    sa = a_scale.float().contiguous() if a_scale is not None else b_scale
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), 1, cfg.split_k)
    _fp8_gemm_kernel[grid](
        a, b, parts.out, bias if bias is not None else y, sa, b_scale,
        m, n, k, parts.k_per_split, max(a_group_k, 1), b_group[0], b_group[1],
        a.stride(0), b.stride(0), parts.stride_os, parts.stride_om, sa.stride(0), b_scale.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, HAS_A_SCALE=a_scale is not None,
        DOT_FP32=upcast_dot(a) or (a_scale is None and a.dtype == torch.float32), DOT_FP16=fp16_dot,
        HAS_BIAS=parts.direct and bias is not None, GROUP_M=8, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return sum_splits(parts, y, bias)
