"""Fused MoE: the (token, expert) pairs sorted into expert-pure blocks, then gate-up and down as grouped GEMMs.

Same signature and result as ``sgl.core.ops.moe.fused_moe`` (the reference): x [T, H], w13 [E, 2I, H], w2 [E, H, I],
top-k weights and ids [T, k] -> [T, H].

1. ``align_tokens`` sorts the T*k pairs by expert and pads each expert's run to a multiple of BLOCK_M, so every
   block of BLOCK_M rows belongs to one expert (padding rows hold the id T*k, which no pair has).
2. One grouped GEMM per projection: program (m, n) multiplies its block's gathered rows by its expert's weight
   tile. The gate-up GEMM reads x rows (pair // k); the down GEMM reads the activation rows of the pairs and scales
   each output row by the pair's routing weight.
3. The k rows of each token are summed.

NOTE: the sort is done with torch ops on the device, with no host sync: the block count is bounded by
T*k + E*(BLOCK_M - 1) rows and blocks past the padded total exit at once, so the launch shapes depend on T only.
``fused_moe_fp8`` runs the same sort and GEMMs over fp8 expert weights with block (or per-row) scales and fp8
activations quantized per token (group) or by a static scale, each K step's fp32 partial scaled by the activation's
and the weight's scale; weight-only, the activations stay in their dtype with a unit scale.
sgl.kernels.fused_moe_int4 runs the same sort over 4-bit AWQ/GPTQ experts.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sgl.kernels._common import dot_precision, upcast_dot
from sgl.kernels.activation import gelu_tanh_and_mul, silu_and_mul
from sgl.kernels.fp8_gemm import block_k_for
from sgl.kernels.fp8_quant import fp8_quantize_per_token_group

MOE_ACTIVATIONS = {"silu": silu_and_mul, "gelu_tanh": gelu_tanh_and_mul}


class AlignedTokens(NamedTuple):
    sorted_pairs: torch.Tensor  # [max_rows] int32: pair ids (t * k + j) grouped by expert; padding = T * k
    block_experts: torch.Tensor  # [max_rows / BLOCK_M] int32: each block's expert (-1 past the padded total)
    padded_total: torch.Tensor  # [1] int32: rows in use


def align_tokens(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> AlignedTokens:
    """Groups the pairs by expert in runs padded to ``block_m``; ids outside [0, E) (other ranks' experts) drop."""
    flat = topk_ids.reshape(-1).long()
    n, dev = flat.numel(), flat.device
    valid = (flat >= 0) & (flat < num_experts)
    expert = torch.where(valid, flat, num_experts)  # NOTE: dropped pairs sort last, into a bucket never stored
    # NOTE: scatter_add, not bincount: bincount reads the max id back to the host, which breaks graph capture.
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=dev)
    counts = counts.scatter_add_(0, expert, torch.ones_like(expert))
    counts = counts[:num_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    run_end = padded.cumsum(0)
    run_start = run_end - padded
    order = torch.argsort(expert, stable=True)
    sorted_expert = expert[order]
    count_start = counts.cumsum(0) - counts
    clamped = sorted_expert.clamp(max=num_experts - 1)
    dest = run_start[clamped] + torch.arange(n, device=dev) - count_start[clamped]
    max_rows = n + num_experts * (block_m - 1)
    max_rows = (max_rows + block_m - 1) // block_m * block_m
    sorted_pairs = torch.full((max_rows + block_m,), n, dtype=torch.int32, device=dev)
    keep = sorted_expert < num_experts
    # NOTE: dropped pairs are scattered to the spare block past max_rows, which no program reads.
    sorted_pairs[torch.where(keep, dest, max_rows)] = torch.where(keep, order, n).to(torch.int32)
    sorted_pairs = sorted_pairs[:max_rows]
    block_starts = torch.arange(0, max_rows, block_m, device=dev)
    block_experts = torch.searchsorted(run_end, block_starts, right=True)
    block_experts = torch.where(block_experts < num_experts, block_experts, -1).to(torch.int32)
    return AlignedTokens(sorted_pairs, block_experts, run_end[-1:].to(torch.int32))


@triton.jit
def _grouped_gemm_kernel(
    a_ptr, b_ptr, c_ptr, weight_ptr, pairs_ptr, experts_ptr, total_ptr, sa_ptr, sb_ptr,
    num_pairs, N, K, a_group_k, b_group_n, b_group_k,
    stride_am, stride_be, stride_bn, stride_bk, stride_cm, stride_sam, stride_sbe, stride_sbn,
    A_ROWS_PER_PAIR: tl.constexpr,  # 1: A is indexed by pair (down GEMM); k: by token = pair // k (gate-up GEMM)
    MUL_WEIGHT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    SCALED: tl.constexpr,  # fp8 A and B with dequantization scales, applied to each K step's fp32 partial
    DOT_FP16: tl.constexpr,  # widen fp8 operands to fp16 (exact) for GPUs without fp8 tensor cores
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
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(a_ptr + a_rows[:, None] * stride_am + offs_k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + expert * stride_be + offs_n[None, :] * stride_bn + offs_k[:, None] * stride_bk,
                    mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        elif DOT_FP16:
            a = a.to(tl.float16)
            b = b.to(tl.float16)
        if SCALED:
            # NOTE: BLOCK_K divides both scale groups along K, so one scale per row and per column covers this step
            part = tl.dot(a, b.to(a.dtype), input_precision=PRECISION)
            sa = tl.load(sa_ptr + a_rows * stride_sam + k0 // a_group_k, mask=row_ok, other=0.0)
            sb = tl.load(sb_ptr + expert * stride_sbe + (offs_n // b_group_n) * stride_sbn + k0 // b_group_k,
                         mask=n_ok, other=0.0)
            acc += part * sa[:, None] * sb[None, :]
        else:
            acc += tl.dot(a, b.to(a.dtype), input_precision=PRECISION)
    if MUL_WEIGHT:
        w = tl.load(weight_ptr + pairs, mask=row_ok, other=0.0).to(tl.float32)
        acc = acc * w[:, None]
    tl.store(c_ptr + pairs[:, None] * stride_cm + offs_n[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


def moe_block_config(num_pairs: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): small M for decode-sized batches, where most blocks are padding."""
    if device.type == "cpu":
        return 16, 32, 32, 1
    if num_pairs <= 64:
        return 16, 64, 128, 4
    return 64, 128, 64, 8


class Fp8Operand(NamedTuple):
    """An fp8 operand's dequantization scales: ``scale [rows / group_n, K / group_k]`` (``[E, ...]`` for weights)."""

    scale: torch.Tensor
    group_n: int  # rows one scale covers (1 for activations: each token has its own)
    group_k: int  # features along K one scale covers


def _grouped_gemm(
    a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, aligned: AlignedTokens, num_pairs: int, rows_per_pair: int,
    weights: torch.Tensor | None, cfg: tuple[int, int, int, int],
    a_fp8: Fp8Operand | None = None, w_fp8: Fp8Operand | None = None, fp16_dot: bool = False,
) -> None:
    bm, bn, bk, warps = cfg
    n, k = w.shape[1], w.shape[2]
    grid = (aligned.block_experts.shape[0], triton.cdiv(n, bn))
    sa = a_fp8.scale if a_fp8 is not None else out
    sb = w_fp8.scale if w_fp8 is not None else out.view(1, *out.shape)
    _grouped_gemm_kernel[grid](
        a, w, out, weights if weights is not None else out, aligned.sorted_pairs, aligned.block_experts,
        aligned.padded_total, sa, sb, num_pairs, n, k,
        a_fp8.group_k if a_fp8 is not None else 1, w_fp8.group_n if w_fp8 is not None else 1,
        w_fp8.group_k if w_fp8 is not None else 1,
        a.stride(0), w.stride(0), w.stride(1), w.stride(2), out.stride(0), sa.stride(0), sb.stride(0), sb.stride(1),
        A_ROWS_PER_PAIR=rows_per_pair, MUL_WEIGHT=weights is not None, UPCAST=upcast_dot(a),
        PRECISION=dot_precision(a), SCALED=w_fp8 is not None, DOT_FP16=fp16_dot and not upcast_dot(a),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
    )


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """x [T, H] -> [T, H]: the reference's result through two grouped GEMMs over expert-sorted blocks."""
    if activation not in MOE_ACTIVATIONS:
        raise ValueError(f"unsupported MoE activation {activation!r}; supported: {', '.join(MOE_ACTIVATIONS)}")
    if w13.dtype != x.dtype or w2.dtype != x.dtype:
        raise ValueError(f"fused_moe needs unquantized expert weights in x's dtype {x.dtype}, got {w13.dtype}")
    t, top_k = topk_ids.shape
    num_pairs = t * top_k
    if num_pairs == 0:
        return x.new_zeros(t, w2.shape[1])
    x = x.contiguous()
    cfg = moe_block_config(num_pairs, x.device)
    aligned = align_tokens(topk_ids, w13.shape[0], cfg[0])
    # NOTE: rows of dropped pairs (other ranks' experts) are never written: zeros keep them finite and out of the sum.
    gate_up = torch.zeros(num_pairs, w13.shape[1], dtype=x.dtype, device=x.device)
    _grouped_gemm(x, w13, gate_up, aligned, num_pairs, top_k, None, cfg)
    hidden = MOE_ACTIVATIONS[activation](gate_up)
    down = torch.zeros(num_pairs, w2.shape[1], dtype=torch.float32, device=x.device)
    _grouped_gemm(hidden, w2, down, aligned, num_pairs, 1, topk_weights.reshape(-1).float().contiguous(), cfg)
    return down.view(t, top_k, -1).sum(dim=1).to(x.dtype)


def _fp8_input(
    a: torch.Tensor, group: int, fp8: torch.dtype, static_scale: torch.Tensor | None, weight_only: bool
) -> tuple[torch.Tensor, Fp8Operand]:
    """A GEMM's input and its scales: e4m3 per token and ``group`` features, e4m3 by one static scale (the values
    fp8_math.quantize_with_scale gives: the same torch ops), or as it is with a unit scale (weight-only)."""
    rows, k = a.shape
    if weight_only:
        return a, Fp8Operand(torch.ones(rows, 1, dtype=torch.float32, device=a.device), 1, k)
    if static_scale is not None:
        top = float(torch.finfo(fp8).max)
        scale = static_scale.float().reshape(1, 1)
        return (a.float() / scale).clamp(-top, top).to(fp8), Fp8Operand(scale.expand(rows, 1), 1, k)
    q, s = fp8_quantize_per_token_group(a, group, fp8)
    return q, Fp8Operand(s, 1, min(group, k))


def fused_moe_fp8(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    block: tuple[int, int] | None,
    activation: str = "silu",
    fp16_dot: bool = False,
    input_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    weight_only: bool = False,
) -> torch.Tensor:
    """x [T, H] -> [T, H] with fp8 experts: W8A8, the activations entering each GEMM quantized dynamically.

    ``block`` (b0, b1): ``w13_scale [E, 2I / b0, H / b1]`` and ``w2_scale [E, H / b0, I / b1]`` (rounded up), the
    inputs per token and b1 features (DeepSeek-V3's scheme); None: per-row weight scales ``[E, rows, 1]`` (per-channel,
    per-tensor spread over its rows, online) and per-token inputs, or static ones (``input_scales``: gate-up's and
    down's, one each), or none (``weight_only``: W8A16). Dynamic activations are rounded by sgl.kernels.fp8_quant,
    which gives the torch reference's e4m3 values bit for bit, so this differs from the reference only in fp32
    summation order and in the gate-up output being stored in x's dtype.
    """
    if activation not in MOE_ACTIVATIONS:
        raise ValueError(f"unsupported MoE activation {activation!r}; supported: {', '.join(MOE_ACTIVATIONS)}")
    t, top_k = topk_ids.shape
    num_pairs = t * top_k
    h, i = w2.shape[1], w2.shape[2]
    if num_pairs == 0:
        return x.new_zeros(t, h)
    fp8 = w13.dtype
    groups = (block[1], block[1]) if block is not None else (h, i)  # activation groups along K: gate-up, down
    w_groups = ((block[0], block[1]),) * 2 if block is not None else ((1, h), (1, i))
    cfg = moe_block_config(num_pairs, x.device)
    bk = min(cfg[2], block_k_for(h, (groups[0], w_groups[0][1])), block_k_for(i, (groups[1], w_groups[1][1])))
    cfg = (cfg[0], cfg[1], bk, cfg[3])
    aligned = align_tokens(topk_ids, w13.shape[0], cfg[0])
    statics = input_scales if input_scales is not None else (None, None)
    dot16 = fp16_dot and not weight_only  # NOTE: fp16 holds every e4m3 value, not every bf16 activation
    xq, xs = _fp8_input(x.contiguous(), groups[0], fp8, statics[0], weight_only)
    gate_up = torch.zeros(num_pairs, w13.shape[1], dtype=x.dtype, device=x.device)
    _grouped_gemm(xq, w13, gate_up, aligned, num_pairs, top_k, None, cfg, xs,
                  Fp8Operand(w13_scale.float().contiguous(), *w_groups[0]), dot16)
    hq, hs = _fp8_input(MOE_ACTIVATIONS[activation](gate_up), groups[1], fp8, statics[1], weight_only)
    down = torch.zeros(num_pairs, h, dtype=torch.float32, device=x.device)
    _grouped_gemm(hq, w2, down, aligned, num_pairs, 1, topk_weights.reshape(-1).float().contiguous(), cfg, hs,
                  Fp8Operand(w2_scale.float().contiguous(), *w_groups[1]), dot16)
    return down.view(t, top_k, -1).sum(dim=1).to(x.dtype)
