"""Fused MoE over 4-bit AWQ / GPTQ experts (W4A16): the sort of sgl.kernels.fused_moe, grouped GEMMs that
dequantize their weight tile in-kernel.

The (token, expert) pairs are sorted into expert-pure blocks by ``align_tokens`` (shared with the dense and FP8
kernels). Program (m, n) of each projection reads its block's rows of the activations and, every K step, its expert's
``[BLOCK_K, BLOCK_N]`` tile of packed nibbles in the checkpoint's layout (AWQ: ``[K, N/8]`` interleaved; GPTQ:
``[K/8, N]``), subtracts the zeros and multiplies by the scales of each input row's group (``g_idx`` under act
order, so nothing is repacked), converts the tile to the activations' dtype and runs one dot with fp32
accumulation, as sgl.kernels.int4_gemm does for a dense layer. The result equals the reference (dequantized experts,
then the reference MoE) up to the weight tile's rounding to the activations' dtype and fp32 summation order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sgl.kernels._common import dot_precision, upcast_dot
from sgl.kernels.fused_moe import MOE_ACTIVATIONS, AlignedTokens, align_tokens, moe_block_config
from sgl.kernels.int4_gemm import awq_shift


class Int4Experts(NamedTuple):
    """One projection's experts as loaded: ``qweight`` (AWQ ``[E, K, N/8]``, GPTQ ``[E, K/8, N]``), ``qzeros
    [E, G, N/8]``, ``scales [E, G, N]``, and ``g_idx [E, K]`` (each input row's group) or None for ``k // group``."""

    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor | None
    group_size: int


@triton.jit
def _grouped_int4_kernel(
    a_ptr, qw_ptr, qz_ptr, s_ptr, g_ptr, c_ptr, weight_ptr, pairs_ptr, experts_ptr, total_ptr,
    num_pairs, N, K, group_size, zero_offset,
    stride_am, stride_qe, stride_qk, stride_ze, stride_zg, stride_se, stride_sg, stride_ge, stride_cm,
    A_ROWS_PER_PAIR: tl.constexpr, MUL_WEIGHT: tl.constexpr, AWQ: tl.constexpr, HAS_G_IDX: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(total_ptr):
        return
    expert = tl.load(experts_ptr + pid_m).to(tl.int64)
    if expert < 0:
        return
    pairs = tl.load(pairs_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = pairs < num_pairs
    a_rows = pairs // A_ROWS_PER_PAIR
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    if AWQ:
        shift_n = awq_shift(offs_n)
    else:
        shift_n = (offs_n % 8) * 4
    qw_base = qw_ptr + expert * stride_qe
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        tile_ok = k_ok[:, None] & n_ok[None, :]
        a = tl.load(a_ptr + a_rows[:, None] * stride_am + offs_k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if AWQ:
            words = tl.load(qw_base + offs_k[:, None] * stride_qk + (offs_n // 8)[None, :], mask=tile_ok, other=0)
            q = (words >> shift_n[None, :]) & 0xF
        else:
            words = tl.load(qw_base + (offs_k // 8)[:, None] * stride_qk + offs_n[None, :], mask=tile_ok, other=0)
            q = (words >> ((offs_k % 8) * 4)[:, None]) & 0xF
        if HAS_G_IDX:
            g = tl.load(g_ptr + expert * stride_ge + offs_k, mask=k_ok, other=0)
        else:
            g = offs_k // group_size
        zw = tl.load(qz_ptr + expert * stride_ze + g[:, None] * stride_zg + (offs_n // 8)[None, :], mask=tile_ok,
                     other=0)
        z = ((zw >> shift_n[None, :]) & 0xF) + zero_offset
        s = tl.load(s_ptr + expert * stride_se + g[:, None] * stride_sg + offs_n[None, :], mask=tile_ok,
                    other=0.0).to(tl.float32)
        w = (q - z).to(tl.float32) * s
        if UPCAST:
            a = a.to(tl.float32)
        else:
            w = w.to(a.dtype)
        acc += tl.dot(a, w, input_precision=PRECISION)
    if MUL_WEIGHT:
        rw = tl.load(weight_ptr + pairs, mask=row_ok, other=0.0).to(tl.float32)
        acc = acc * rw[:, None]
    tl.store(c_ptr + pairs[:, None] * stride_cm + offs_n[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


def _grouped_int4(
    a: torch.Tensor, w: Int4Experts, out: torch.Tensor, aligned: AlignedTokens, num_pairs: int, rows_per_pair: int,
    weights: torch.Tensor | None, cfg: tuple[int, int, int, int], awq: bool, zero_offset: int,
) -> None:
    bm, bn, bk, warps = cfg
    n, k = w.scales.shape[2], a.shape[1]
    g_idx = w.g_idx if w.g_idx is not None else w.qzeros
    grid = (aligned.block_experts.shape[0], triton.cdiv(n, bn))
    _grouped_int4_kernel[grid](
        a, w.qweight, w.qzeros, w.scales, g_idx, out, weights if weights is not None else out,
        aligned.sorted_pairs, aligned.block_experts, aligned.padded_total, num_pairs, n, k, w.group_size,
        zero_offset, a.stride(0), w.qweight.stride(0), w.qweight.stride(1), w.qzeros.stride(0), w.qzeros.stride(1),
        w.scales.stride(0), w.scales.stride(1), g_idx.stride(0), out.stride(0),
        A_ROWS_PER_PAIR=rows_per_pair, MUL_WEIGHT=weights is not None, AWQ=awq, HAS_G_IDX=w.g_idx is not None,
        UPCAST=upcast_dot(a) or a.dtype == torch.float32, PRECISION=dot_precision(a),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
    )


def fused_moe_int4(
    x: torch.Tensor, w13: Int4Experts, w2: Int4Experts, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
    awq: bool, zero_offset: int = 0, activation: str = "silu",
) -> torch.Tensor:
    """x [T, H] -> [T, H] with 4-bit experts (W4A16): gate-up ``[E, ..., 2I]`` stored in x's dtype as the dense
    kernel stores it, then down weighted per pair in fp32 and summed per token. ``zero_offset`` is added to every
    stored zero (GPTQ v1 stores zero - 1). Ids outside [0, E) add nothing."""
    if activation not in MOE_ACTIVATIONS:
        raise ValueError(f"unsupported MoE activation {activation!r}; supported: {', '.join(MOE_ACTIVATIONS)}")
    t, top_k = topk_ids.shape
    num_pairs = t * top_k
    h = w2.scales.shape[2]
    if num_pairs == 0:
        return x.new_zeros(t, h)
    x = x.contiguous()
    cfg = moe_block_config(num_pairs, x.device)
    aligned = align_tokens(topk_ids, w13.scales.shape[0], cfg[0])
    # NOTE: rows of dropped pairs (other ranks' experts) are never written: zeros keep them out of the sum
    gate_up = torch.zeros(num_pairs, w13.scales.shape[2], dtype=x.dtype, device=x.device)
    _grouped_int4(x, w13, gate_up, aligned, num_pairs, top_k, None, cfg, awq, zero_offset)
    hidden = MOE_ACTIVATIONS[activation](gate_up)
    down = torch.zeros(num_pairs, h, dtype=torch.float32, device=x.device)
    _grouped_int4(hidden, w2, down, aligned, num_pairs, 1, topk_weights.reshape(-1).float().contiguous(), cfg, awq,
                  zero_offset)
    return down.view(t, top_k, -1).sum(dim=1).to(x.dtype)
