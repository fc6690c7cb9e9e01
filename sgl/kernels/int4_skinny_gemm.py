"""y = x @ dequant(W).T for a handful of rows of x (decode at small batch) and 4-bit AWQ (GEMM layout) or GPTQ
weights in their checkpoint layouts, streaming the packed words once: half a byte a weight.

At decode the general W4A16 kernel (sgl.kernels.int4_gemm) is bound by its per-weight work, not by memory: it reads
each packed word once per column sharing it, gathers a scale and a zero per weight and converts every value through
fp32. Here, for groups that hold whole K steps (no act-order ``g_idx``), each program:

- loads its tile's words once and splits each into eight nibbles (AWQ: a row's eight interleaved columns; GPTQ: eight
  consecutive K rows), working in nibble order and mapping to real columns only for scales, bias and the store;
- turns a nibble q into the float 2**e + q by OR-ing it into the mantissa of 2**e (128 in bf16, 1024 in fp16: exact,
  no conversion instruction);
- takes the step's zero and scale once per column: ``sum_k x_k (q_k - z) s = s (dot(x, 2**e + q) - (2**e + z)
  sum_k x_k)``, so the weight tile gets no float arithmetic at all; the fp32 dot is exact in its products.

Splits write fp32 partials summed in a fixed order (no atomics), as in sgl.kernels.skinny_gemm.

One row of x (batch-1 decode) may take ``_int4_gemv_kernel`` instead (``Int4SkinnyConfig.gemv``): no tensor cores, so
the nibbles never move into a dot operand's layout. It keeps each tile in the shape its words unpack to (AWQ:
[K, words, 8], GPTQ: [words, 8, N]), makes each nibble the fp32 2**23 + q by OR-ing it into 2**23's mantissa and
subtracting 2**23 (exact, no conversion instruction), and per weight does one multiply-add with x times the column's
scale; a full-tile fp32 accumulator is reduced once at the end, and the zeros enter per group as ``s z sum(x)``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sgl.kernels._common import upcast_dot
from sgl.kernels.pdl import launch_options, wait_for_previous
from sgl.kernels.skinny_gemm import MAX_ROWS, split_k_for, split_output, sum_splits

PACK = 8  # nibbles a word


class Int4SkinnyConfig(NamedTuple):
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int
    gemv: bool = False  # one row of x: _int4_gemv_kernel (ignored for more rows)


@triton.jit
def _nibble_cols(j, AWQ: tl.constexpr):
    """The real column of tile column j (nibble order): AutoAWQ stores columns (0, 2, 4, 6, 1, 3, 5, 7) of each
    eight in nibbles 0..7; GPTQ in order."""
    if AWQ:
        i = j % 8
        return j - i + (i % 4) * 2 + i // 4
    else:
        return j


@triton.jit
def _int4_skinny_kernel(
    x_ptr, qw_ptr, qz_ptr, s_ptr, out_ptr, bias_ptr,
    M, N, K, k_per_split, group_size, zero_offset,
    stride_xm, stride_qw, stride_qz, stride_s, stride_os, stride_om,
    AWQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    MAGIC_FP16: tl.constexpr, MAGIC_BITS: tl.constexpr, MAGIC_BASE: tl.constexpr, UPCAST: tl.constexpr,
    HAS_BIAS: tl.constexpr, USE_PDL: tl.constexpr,
):
    """Writes split ``program_id(1)``'s fp32 partial, or (one split) the finished y with its bias."""
    wait_for_previous(USE_PDL)
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    rmask = rows < M
    j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # tile columns in nibble order
    cols = _nibble_cols(j, AWQ)
    cmask = j < N
    shifts = tl.arange(0, 8) * 4
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < k_end
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        if AWQ:  # words [BLOCK_K, BLOCK_N / 8]: eight columns each
            wc = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
            words = tl.load(qw_ptr + ks[:, None] * stride_qw + wc[None, :],
                            mask=kmask[:, None] & (wc < N // 8)[None, :], other=0)
            q = tl.reshape((words[:, :, None] >> shifts[None, None, :]) & 0xF, [BLOCK_K, BLOCK_N])
        else:  # words [BLOCK_K / 8, BLOCK_N]: eight K rows each
            wr = k0 // 8 + tl.arange(0, BLOCK_K // 8)
            words = tl.load(qw_ptr + wr[:, None] * stride_qw + j[None, :],
                            mask=(wr * 8 < k_end)[:, None] & cmask[None, :], other=0)
            q = tl.reshape((words[:, None, :] >> shifts[None, :, None]) & 0xF, [BLOCK_K, BLOCK_N])
        w = (q | MAGIC_BITS).to(tl.int16)
        if MAGIC_FP16:
            w = w.to(tl.float16, bitcast=True)
        else:
            w = w.to(tl.bfloat16, bitcast=True)
        g = k0 // group_size
        zw = tl.load(qz_ptr + g * stride_qz + j // 8, mask=cmask, other=0)
        z = ((zw >> (j % 8) * 4) & 0xF) + zero_offset
        s = tl.load(s_ptr + g * stride_s + cols, mask=cmask, other=0.0).to(tl.float32)
        if UPCAST:
            x = x.to(tl.float32)
            part = tl.dot(x, w.to(tl.float32))
        else:
            part = tl.dot(x, w)
        xsum = tl.sum(x.to(tl.float32), axis=1)
        acc += (part - xsum[:, None] * (z.to(tl.float32) + MAGIC_BASE)[None, :]) * s[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + split * stride_os + rows[:, None] * stride_om + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _int4_gemv_kernel(
    x_ptr, qw_ptr, qz_ptr, s_ptr, out_ptr, bias_ptr,
    N, K, k_per_split, group_size, zero_offset,
    stride_qw, stride_qz, stride_s, stride_os,
    AWQ: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr, USE_PDL: tl.constexpr,
):
    """One row of x: writes split ``program_id(1)``'s fp32 partial, or (one split) the finished y with its bias."""
    wait_for_previous(USE_PDL)
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    nib = tl.arange(0, 8)
    shifts = nib * 4
    WORDS: tl.constexpr = BLOCK_N // 8 if AWQ else BLOCK_K // 8
    w_i = tl.arange(0, WORDS)
    if AWQ:  # tiles [BLOCK_K, WORDS, 8]: row k, word w, nibble i is column (pid_n * WORDS + w) * 8 + col_of(i)
        wc = pid_n * WORDS + w_i
        wmask = wc < N // 8
        cols = wc[:, None] * 8 + ((nib % 4) * 2 + nib // 4)[None, :]  # [WORDS, 8]: AutoAWQ's nibble order
        cmask = wmask[:, None] & (nib < 8)[None, :]
        acc = tl.zeros([BLOCK_K, WORDS, 8], dtype=tl.float32)
        zacc = tl.zeros([WORDS, 8], dtype=tl.float32)
    else:  # tiles [WORDS, 8, BLOCK_N]: word w, nibble i is K row w * 8 + i of column j
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < N
        acc = tl.zeros([WORDS, 8, BLOCK_N], dtype=tl.float32)
        zacc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        g = k0 // group_size
        if AWQ:
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < k_end
            x = tl.load(x_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
            words = tl.load(qw_ptr + ks[:, None] * stride_qw + wc[None, :], mask=kmask[:, None] & wmask[None, :],
                            other=0)
            q = (words[:, :, None] >> shifts[None, None, :]) & 0xF
            zw = tl.load(qz_ptr + g * stride_qz + wc, mask=wmask, other=0)
            z = ((zw[:, None] >> shifts[None, :]) & 0xF) + zero_offset
            s = tl.load(s_ptr + g * stride_s + cols, mask=cmask, other=0.0).to(tl.float32)
            w = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            acc += (x[:, None, None] * s[None, :, :]) * w
            zacc += s * z.to(tl.float32) * tl.sum(x, axis=0)
        else:
            wr = k0 // 8 + w_i
            wrmask = wr * 8 < k_end
            ks = wr[:, None] * 8 + nib[None, :]
            x = tl.load(x_ptr + ks, mask=(ks < k_end), other=0.0).to(tl.float32)  # [WORDS, 8]
            words = tl.load(qw_ptr + wr[:, None] * stride_qw + cols[None, :], mask=wrmask[:, None] & cmask[None, :],
                            other=0)
            q = (words[:, None, :] >> shifts[None, :, None]) & 0xF
            zw = tl.load(qz_ptr + g * stride_qz + cols // 8, mask=cmask, other=0)
            z = ((zw >> (cols % 8) * 4) & 0xF) + zero_offset
            s = tl.load(s_ptr + g * stride_s + cols, mask=cmask, other=0.0).to(tl.float32)
            w = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            acc += (x[:, :, None] * s[None, None, :]) * w
            zacc += s * z.to(tl.float32) * tl.sum(tl.sum(x, axis=1), axis=0)
    y = tl.sum(acc, axis=0) - zacc if AWQ else tl.sum(tl.sum(acc, axis=1), axis=0) - zacc
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + split * stride_os + cols, y.to(out_ptr.dtype.element_ty), mask=cmask)


def max_block_k(group_size: int, k: int) -> int | None:
    """The longest K step (a power of two, 16..128) inside one quantization group, or None if none fits."""
    if group_size >= k:
        return 128
    block = 128
    while block > 16 and group_size % block:
        block //= 2
    return None if group_size % block else block


@functools.cache
def int4_skinny_config(n: int, k: int, block_k_limit: int, device: torch.device) -> Int4SkinnyConfig:
    """128 K rows a step (one group of the common group size 128) and 64 columns a program (32 bytes of each
    AWQ row), K split for ~6 programs per multiprocessor. A first guess: benchmarks/quant_gemm_sweep.py prints the
    best tile per shape.

    NOTE: a streaming kernel is bound by the bytes it keeps in flight. The bf16 skinny GEMM reaches ~80% of HBM
    bandwidth with ~1.5 programs per multiprocessor, each reading 16 KiB a step; this tile reads 4 KiB of packed words a
    step, so the same 1.5 programs (the rule used before) left a quarter of those bytes in flight: batch-1 AWQ decode
    ran at ~12% of its bandwidth bound on an H100. Four times the programs restores the bytes (the registers of a
    64-column tile allow ~4 resident programs a multiprocessor; the rest queue)."""
    block_n, block_k = 64, min(128, block_k_limit)
    split = split_k_for(triton.cdiv(n, block_n), k, block_k, device, per_sm=6.0)
    return Int4SkinnyConfig(block_n, block_k, split, 4, 4)


@functools.cache
def int4_gemv_config(n: int, k: int, block_k_limit: int, device: torch.device) -> Int4SkinnyConfig:
    """One row of x: the GEMV kernel, 64 columns by one group (128) of K a step, K split in 4 (each split still
    streaming >= 2 steps). From benchmarks/quant_gemm_sweep.py --small on an H100 at Llama-3.1-8B's shapes, AWQ: one
    layer's four projections 333 us with the tensor-core tiles, 151 us with these (bf16 skinny: 157 us)."""
    block_k = min(128, block_k_limit)
    split = 4
    while split > 1 and k // split < 2 * block_k:
        split //= 2
    return Int4SkinnyConfig(64, block_k, split, 4, 3, gemv=True)


def int4_skinny_gemm(
    x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
    awq: bool, zero_offset: int = 0, bias: torch.Tensor | None = None, config: Int4SkinnyConfig | None = None,
) -> torch.Tensor:
    """``x`` [M, K] (M <= 16) times the 4-bit weight -> [M, N] in x's dtype; the layouts of sgl.kernels.int4_gemm,
    input row k in group ``k // group_size`` (no act order)."""
    m, k = x.shape
    n = scales.shape[1]
    if m > MAX_ROWS:
        raise ValueError(f"int4_skinny_gemm takes at most {MAX_ROWS} rows (got {m})")
    expected = (k, n // PACK) if awq else (k // PACK, n)
    if tuple(qweight.shape) != expected or n % PACK or k % PACK:
        raise ValueError(f"qweight {tuple(qweight.shape)} does not match x's {k} columns and {n} outputs")
    limit = max_block_k(group_size, k)
    if limit is None:
        raise ValueError(f"group size {group_size}: no power-of-two K step of 16..128 fits in a group")
    cfg = config or (int4_gemv_config if m == 1 else int4_skinny_config)(n, k, limit, x.device)
    if cfg.block_k > limit or cfg.block_n % PACK:
        raise ValueError(f"block_k {cfg.block_k} must fit in a group (<= {limit}) and block_n {cfg.block_n} hold "
                         f"whole words of {PACK}")
    x = x if x.stride(1) == 1 else x.contiguous()
    fp16 = x.dtype == torch.float16
    magic_bits, magic_base = (0x6400, 1024.0) if fp16 else (0x4300, 128.0)  # 2**10 in fp16, 2**7 in bf16: ulp 1
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    parts = split_output(y, k, cfg.split_k, cfg.block_k)
    if m == 1 and cfg.gemv:
        _int4_gemv_kernel[(triton.cdiv(n, cfg.block_n), cfg.split_k)](
            x, qweight, qzeros, scales, parts.out, bias if bias is not None else y,
            n, k, parts.k_per_split, group_size, zero_offset,
            qweight.stride(0), qzeros.stride(0), scales.stride(0), parts.stride_os,
            AWQ=awq, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, HAS_BIAS=parts.direct and bias is not None,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(x),
        )
        return sum_splits(parts, y, bias)
    _int4_skinny_kernel[(triton.cdiv(n, cfg.block_n), cfg.split_k)](
        x, qweight, qzeros, scales, parts.out, bias if bias is not None else y,
        m, n, k, parts.k_per_split, group_size, zero_offset,
        x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), parts.stride_os, parts.stride_om,
        AWQ=awq, BLOCK_M=MAX_ROWS, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, MAGIC_FP16=fp16,
        MAGIC_BITS=magic_bits, MAGIC_BASE=magic_base, UPCAST=upcast_dot(x) or x.dtype == torch.float32,
        HAS_BIAS=parts.direct and bias is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(x),
    )
    return sum_splits(parts, y, bias)
