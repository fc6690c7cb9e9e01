"""y = quant(x) @ (w * w_scale).T for a handful of rows of x (decode at small batch) and fp8 weights, in one launch.

At M <= 16 the product is bound by reading w once, at one byte a weight: each program streams BLOCK_N rows of w over
one K split, as sgl.kernels.skinny_gemm does for bf16. The older decode path quantized x in torch first (half a dozen
tiny kernels a projection, then sgl.kernels.fp8_gemm); here the kernel quantizes x itself, exactly as the reference
(Fp8LinearMethod) does:

- ``token``: one dynamic scale per row over all of K. Each program first reads its rows of x whole (from L2; masked
  padding rows cost nothing) for their absolute maximum, so no second kernel and no grid-wide sync are needed.
- ``group``: one dynamic scale per row and BLOCK_K features (block-wise checkpoints, groups of 128): BLOCK_K is the
  group, so each K step's amax is its own tile's.
- ``static``: the checkpoint's one input scale.
- ``none`` (weight-only): x is not rounded; w widens to x's dtype.

A dynamic scale is amax * fp32(1 / max) (as torch computes ``amax / 448`` on CUDA; sgl.plugins.quant.fp8_math
writes the multiply so the CPU agrees), and x / scale is an IEEE division rounded to nearest-even fp8, so each row's
fp8 values are the reference's; the dot then runs on fp8 tensor cores (or widened to fp16, exact for e4m3, where the
GPU has none) with fp32 accumulation, and the scales multiply the fp32 partials: per K step for block scales (BLOCK_K
divides the weight's scale group), once at the end for per-row ones. Splits write fp32 partials that sgl.kernels.skinny_gemm's second pass
sums in a fixed order (no atomics), so the result does not depend on scheduling.

NOTE: every program rounds its split of x itself, each value through an IEEE division: at batch 1 one row (the dot's
other 15 rows are zeros), otherwise all 16 rows in registers, padding included, which at BLOCK_N = 64 is a quarter as
many values as the weight tile it streams. A wider BLOCK_N amortizes it; benchmarks/quant_gemm_sweep.py shows whether
it bounds the kernel.

One row of x (batch-1 decode) may take ``_fp8_gemv_kernel`` instead (``Fp8SkinnyConfig.gemv``): no tensor cores (so
no 15 rows of zeros and no operand layouts), the weights widened to fp32 and multiplied into a full-tile accumulator
that is reduced once at the end; with block scales each K step's tile is reduced and scaled on its own.
"""

from __future__ import annotations

import functools
from enum import IntEnum
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sgl.kernels._common import sm_count, upcast_dot
from sgl.kernels.pdl import launch_options, wait_for_previous
from sgl.kernels.skinny_gemm import MAX_ROWS, split_k_for, split_output, sum_splits


class ActQuant(IntEnum):
    """How x is rounded before the product (the reference method's activation scheme)."""

    NONE = 0
    TOKEN = 1
    GROUP = 2
    STATIC = 3


class DotKind(IntEnum):
    FP8 = 0  # fp8 tensor cores (sm89+)
    FP16 = 1  # both operands widened to fp16 (exact for e4m3) on GPUs without fp8 tensor cores
    FP32 = 2  # the interpreter (CPU tl.dot on narrow types is not trustworthy)


class Fp8SkinnyConfig(NamedTuple):
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int
    gemv: bool = False  # one row of x: _fp8_gemv_kernel (ignored for more rows)


@triton.jit
def round_e4m3_in_fp32(v, MIN_NORMAL: tl.constexpr):
    """``v`` (fp32, within fp8's range) rounded to the nearest e4m3 value, ties to even, still in fp32.

    NOTE: the interpreter's fp32 -> fp8 cast drops the carry when rounding up crosses a power of two (7.95 becomes
    4.0); this rounding leaves it only exact values to cast. Normals: round the fp32 mantissa to 3 bits (the carry
    runs into the exponent); subnormals: add and remove a constant whose fp32 ulp is the e4m3 subnormal step.
    """
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000
    magic = MIN_NORMAL / 8 * 12582912.0  # 1.5 * 2**23 subnormal steps
    return tl.where(tl.abs(v) < MIN_NORMAL, (v + magic) - magic, bits.to(tl.float32, bitcast=True))


@triton.jit
def _fp8_skinny_kernel(
    x_ptr, w_ptr, ws_ptr, xs_ptr, out_ptr, bias_ptr,
    M, N, K, k_per_split, w_group_n, w_group_k,
    stride_xm, stride_wn, stride_wsn, stride_os, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr,
    W_BLOCKED: tl.constexpr, FP8_MAX: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr, X_ROWS: tl.constexpr,
    HAS_BIAS: tl.constexpr, IMPRECISE_ACC: tl.constexpr, USE_PDL: tl.constexpr,
):
    """Writes split ``program_id(1)``'s fp32 partial, or (one split) the finished y with its bias."""
    wait_for_previous(USE_PDL)
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    # NOTE: x is rounded on X_ROWS rows (1 at batch 1, where the other 15 of the dot's rows are zeros)
    xrows = tl.arange(0, X_ROWS)
    xmask = xrows < M
    x_scale = tl.full([X_ROWS], 1.0, dtype=tl.float32)
    if ACT == 1:  # per token over all of K: this program's rows, read whole
        amax = tl.zeros([X_ROWS], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            xa = tl.load(x_ptr + xrows[:, None] * stride_xm + ks[None, :], mask=xmask[:, None] & (ks < K)[None, :],
                         other=0.0)
            amax = tl.maximum(amax, tl.max(tl.abs(xa.to(tl.float32)), axis=1))
        x_scale = tl.maximum(amax * (1.0 / FP8_MAX), 1e-12)
    elif ACT == 3:
        x_scale = x_scale * tl.load(xs_ptr)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < k_end
        w = tl.load(w_ptr + cols[:, None] * stride_wn + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        if ACT == 0:
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                        other=0.0)
            if DOT == 2:
                x = x.to(tl.float32)
            part = tl.dot(x, tl.trans(w.to(x.dtype)))
        else:
            xf = tl.load(x_ptr + xrows[:, None] * stride_xm + ks[None, :], mask=xmask[:, None] & kmask[None, :],
                         other=0.0).to(tl.float32)
            if ACT == 2:
                x_scale = tl.maximum(tl.max(tl.abs(xf), axis=1) * (1.0 / FP8_MAX), 1e-12)
            q = tl.clamp(tl.math.div_rn(xf, x_scale[:, None]), -FP8_MAX, FP8_MAX)
            if DOT == 2:
                q = round_e4m3_in_fp32(q, FP8_MIN_NORMAL)
            if X_ROWS < BLOCK_M:
                q = tl.where(rows[:, None] == 0, q, 0.0)
            q = q.to(w.dtype, fp_downcast_rounding="rtne")  # torch rounds to nearest, ties to even
            if DOT == 0:
                # NOTE: on sm90 Triton lets fp8 wgmma accumulate the whole K loop in the tensor cores' reduced-precision
                # (~14-bit) accumulator unless told otherwise; promoting to fp32 after every instruction (K = 32)
                # keeps the sum as accurate as the reference's fp32 one (fast mode: 6e-3 relative at K = 4096, H100).
                part = tl.dot(q, tl.trans(w), max_num_imprecise_acc=IMPRECISE_ACC)
            elif DOT == 1:
                part = tl.dot(q.to(tl.float16), tl.trans(w.to(tl.float16)))
            else:
                part = tl.dot(q.to(tl.float32), tl.trans(w.to(tl.float32)))
        if ACT == 2:
            part = part * x_scale[:, None]
        if W_BLOCKED:
            sw = tl.load(ws_ptr + (cols // w_group_n) * stride_wsn + k0 // w_group_k, mask=cmask, other=0.0)
            part = part * sw[None, :]
        acc += part
    if not W_BLOCKED:
        acc = acc * tl.load(ws_ptr + cols * stride_wsn, mask=cmask, other=0.0)[None, :]
    if ACT == 1 or ACT == 3:
        acc = acc * x_scale[:, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + split * stride_os + rows[:, None] * stride_om + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, w_ptr, ws_ptr, xs_ptr, out_ptr, bias_ptr,
    N, K, k_per_split, w_group_n, w_group_k, stride_wn, stride_wsn, stride_os,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACT: tl.constexpr, W_BLOCKED: tl.constexpr,
    FP8_MAX: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr, INTERPRETED: tl.constexpr, HAS_BIAS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """One row of x: writes split ``program_id(1)``'s fp32 partial, or (one split) the finished y with its bias."""
    wait_for_previous(USE_PDL)
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    x_scale = 1.0
    if ACT == 1:  # per token over all of K: the row, read whole
        amax = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            amax = tl.maximum(amax, tl.abs(tl.load(x_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)))
        x_scale = tl.maximum(tl.max(amax, axis=0) * (1.0 / FP8_MAX), 1e-12)
    elif ACT == 3:
        x_scale = tl.load(xs_ptr)
    acc_n = tl.zeros([BLOCK_N], dtype=tl.float32)  # block scales: each step's tile reduced and scaled
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)  # per-row scales: reduced once at the end
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < k_end
        q = tl.load(x_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
        if ACT != 0:
            if ACT == 2:
                x_scale = tl.maximum(tl.max(tl.abs(q), axis=0) * (1.0 / FP8_MAX), 1e-12)
            q = tl.clamp(tl.math.div_rn(q, x_scale), -FP8_MAX, FP8_MAX)
            if INTERPRETED:
                q = round_e4m3_in_fp32(q, FP8_MIN_NORMAL)
            q = q.to(w_ptr.dtype.element_ty, fp_downcast_rounding="rtne").to(tl.float32)
            if ACT == 2:
                q = q * x_scale
        w = tl.load(w_ptr + cols[:, None] * stride_wn + ks[None, :], mask=cmask[:, None] & kmask[None, :],
                    other=0.0).to(tl.float32)
        if W_BLOCKED:
            sw = tl.load(ws_ptr + (cols // w_group_n) * stride_wsn + k0 // w_group_k, mask=cmask, other=0.0)
            acc_n += tl.sum(w * q[None, :], axis=1) * sw
        else:
            acc += w * q[None, :]
    if W_BLOCKED:
        y = acc_n
    else:
        y = tl.sum(acc, axis=1) * tl.load(ws_ptr + cols * stride_wsn, mask=cmask, other=0.0)
    if ACT == 1 or ACT == 3:
        y = y * x_scale
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + split * stride_os + cols, y.to(out_ptr.dtype.element_ty), mask=cmask)


@functools.cache
def fp8_skinny_config(n: int, k: int, block_k_limit: int, device: torch.device) -> Fp8SkinnyConfig:
    """256 bytes of each weight row per K step (the bf16 skinny GEMM's 128 values), fewer where a scale group is
    shorter; 64 rows a program where that already gives ~1.5 programs per multiprocessor, else 32, and K split until
    it does (each split still streams >= 2 K steps). A first guess: benchmarks/quant_gemm_sweep.py prints the best
    tile per shape."""
    block_k = min(256, block_k_limit)
    target = 1.5 * sm_count(device)
    block_n = 64 if triton.cdiv(n, 64) >= target else 32
    return Fp8SkinnyConfig(block_n, block_k, split_k_for(triton.cdiv(n, block_n), k, block_k, device), 4, 4)


@functools.cache
def fp8_gemv_config(n: int, k: int, block_k_limit: int, device: torch.device) -> Fp8SkinnyConfig:
    """One row of x and per-row weight scales: the GEMV kernel over 256-byte K steps; 64 columns a program for wide
    projections (8 warps), else 32, with ~2.5 programs per multiprocessor. From benchmarks/quant_gemm_sweep.py --small
    on an H100 at Llama-3.1-8B's shapes (one layer's four projections: 143 us with the default dot tiles, 99 us with
    the GEMV's best; bf16 skinny: 155 us)."""
    block_k = min(256, block_k_limit)
    wide = n >= 16384
    block_n = 64 if wide else 32
    split = split_k_for(triton.cdiv(n, block_n), k, block_k, device, per_sm=1.5 if wide else 2.5)
    return Fp8SkinnyConfig(block_n, block_k, split, 8 if wide else 4, 4, gemv=True)


def max_block_k(k: int, w_group_k: int, act: ActQuant, act_group: int = 0) -> int | None:
    """The longest K step the scale groups allow (a power of two, 16..256, dividing the weight's K group; for
    per-group activations the group itself), or None where the groups fit no such step."""
    limit = 256
    if w_group_k < k:
        while limit > 16 and w_group_k % limit:
            limit //= 2
        if w_group_k % limit:
            return None
    if act == ActQuant.GROUP and act_group < k:
        if act_group < 16 or act_group & (act_group - 1) or act_group > limit:
            return None
        limit = act_group
    return limit


def fp8_skinny_gemm(
    x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, w_group: tuple[int, int], act: ActQuant,
    act_group: int = 0, x_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
    dot: DotKind | None = None, config: Fp8SkinnyConfig | None = None,
) -> torch.Tensor:
    """``x`` [M, K] (M <= 16, float) times fp8 ``w`` [N, K] with ``w_scale`` [N / w_group[0], K / w_group[1]]
    (groups rounded up; a per-row scale is [N, 1] with group (1, K)), x rounded as ``act`` says (``act_group``
    features for GROUP, ``x_scale`` [1] for STATIC), plus ``bias`` -> [M, N] in x's dtype.

    ``dot`` defaults to fp8 tensor cores on a device, fp32 under the interpreter.
    """
    m, k = x.shape
    n = w.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"fp8_skinny_gemm takes at most {MAX_ROWS} rows (got {m})")
    if w.shape[1] != k or w.element_size() != 1:
        raise ValueError(f"w must be fp8 [N, {k}] (got {w.dtype} {tuple(w.shape)})")
    if w.stride(1) != 1:
        raise ValueError("w's rows must be contiguous")
    if (act == ActQuant.STATIC) != (x_scale is not None):
        raise ValueError("x_scale is the static activation scale: given for STATIC and only then")
    if act == ActQuant.GROUP and act_group >= k:
        act = ActQuant.TOKEN  # NOTE: one group covering the row is a per-token scale (as the reference reads it)
    limit = max_block_k(k, w_group[1], act, act_group)
    if limit is None:
        raise ValueError(f"scale groups (weight {w_group[1]}, activations {act_group}) along K fit no K step: "
                         "each must be a power of two of at least 16")
    if config is None and m == 1 and w_group == (1, k):
        config = fp8_gemv_config(n, k, limit, x.device)  # NOTE: block-scaled weights keep the dot kernel (unswept)
    cfg = config or fp8_skinny_config(n, k, limit, x.device)
    if cfg.block_k > limit or (act == ActQuant.GROUP and cfg.block_k != act_group):
        raise ValueError(f"block_k {cfg.block_k} does not fit the scale groups (at most {limit}, the activation group "
                         f"itself for per-group activations)")
    x = x if x.stride(1) == 1 else x.contiguous()
    if dot is None:
        dot = DotKind.FP32 if upcast_dot(x) else DotKind.FP8
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    parts = split_output(y, k, cfg.split_k, cfg.block_k)
    w_scale = w_scale if w_scale.dtype == torch.float32 and w_scale.stride(-1) == 1 else w_scale.float().contiguous()
    xs = x_scale.float() if x_scale is not None else w_scale
    fp8_max, min_normal = float(torch.finfo(w.dtype).max), float(torch.finfo(w.dtype).smallest_normal)
    if m == 1 and cfg.gemv:
        _fp8_gemv_kernel[(triton.cdiv(n, cfg.block_n), cfg.split_k)](
            x, w, w_scale, xs, parts.out, bias if bias is not None else y,
            n, k, parts.k_per_split, w_group[0], w_group[1], w.stride(0), w_scale.stride(0), parts.stride_os,
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, ACT=int(act), W_BLOCKED=w_group != (1, k), FP8_MAX=fp8_max,
            FP8_MIN_NORMAL=min_normal, INTERPRETED=dot == DotKind.FP32, HAS_BIAS=parts.direct and bias is not None,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(x),
        )
        return sum_splits(parts, y, bias)
    _fp8_skinny_kernel[(triton.cdiv(n, cfg.block_n), cfg.split_k)](
        x, w, w_scale, xs, parts.out, bias if bias is not None else y,
        m, n, k, parts.k_per_split, w_group[0], w_group[1],
        x.stride(0), w.stride(0), w_scale.stride(0), parts.stride_os, parts.stride_om,
        BLOCK_M=MAX_ROWS, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, ACT=int(act), DOT=int(dot),
        W_BLOCKED=w_group != (1, k), FP8_MAX=fp8_max,
        FP8_MIN_NORMAL=min_normal, X_ROWS=1 if m == 1 else MAX_ROWS, HAS_BIAS=parts.direct and bias is not None,
        IMPRECISE_ACC=min(32, cfg.block_k),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(x),
    )
    return sum_splits(parts, y, bias)
