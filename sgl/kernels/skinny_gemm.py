"""y = x @ w.T for a handful of rows of x (decode at small batch): a weight-streaming GEMM.

At M <= 16 the product is bound by reading w once; each program streams BLOCK_N rows of w over one K-split and
multiplies them with all of x's rows on the tensor cores (x padded to 16 rows in registers, so the padding costs no
memory traffic). Splits (when N alone gives too few programs) write fp32 partials that are summed in a fixed order,
by a second pass or (given tickets) by the tile's last split: the result does not depend on scheduling (no atomic
adds of values; the one atomic is a counter), so greedy decoding stays reproducible.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sgl.kernels._common import sm_count, upcast_dot
from sgl.kernels.activation import gated_act
from sgl.kernels.pdl import launch_options, prefetch_to_l2, wait_for_previous

MAX_ROWS = 16  # x rows the kernel takes; larger batches go to the vendor GEMM


class SkinnyConfig(NamedTuple):
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


@triton.jit
def _skinny_gemm_kernel(
    x_ptr, w_ptr, out_ptr, bias_ptr, y_ptr, tickets_ptr,
    M, N, K, k_per_split,
    stride_xm, stride_wn, stride_os, stride_om, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
    HAS_BIAS: tl.constexpr, GATED: tl.constexpr, GELU_TANH: tl.constexpr,
    SPLIT_K: tl.constexpr, REDUCE: tl.constexpr, REDUCE_BIAS: tl.constexpr, USE_PDL: tl.constexpr,
    ONE_ROW: tl.constexpr = False,
):
    """Writes split ``program_id(1)``'s fp32 partial, or (one split) the finished y with its bias.

    NOTE: GATED: x is ``[gate | up]`` (2K wide) and each K step's input is act(gate) * up, computed on the tile with
    the activation kernel's rounding; every program recomputes its K range's activations, a few FLOPs per weight row
    (ONE_ROW: of the one real row only, not of the tile's padding rows).
    REDUCE: the split that finishes a column tile last (a ticket per tile, ``tickets_ptr``) sums the tile's partials
    into y in split order, as ``_sum_splits_kernel`` would, and resets the ticket: no second launch.
    """
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    if USE_PDL:
        # NOTE: no kernel of a step writes the weights: the first two K steps' lines (one address per 128 bytes of
        # a 16-bit row) are asked of L2 before waiting for the previous kernel
        pk = k_start + tl.arange(0, 2 * BLOCK_K // 64) * 64
        prefetch_to_l2(w_ptr + cols[:, None] * stride_wn + pk[None, :], cmask[:, None] & (pk < k_end)[None, :])
    wait_for_previous(USE_PDL)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < k_end
        xmask = rmask[:, None] & kmask[None, :]
        if GATED and ONE_ROW:
            # NOTE: one row (batch-1 decode): the activation of that row only, not of the tile's BLOCK_M padded rows
            # (16x the exponentials, in every column tile's program), then placed in row 0 of the dot's tile
            gate = tl.load(x_ptr + ks, mask=kmask, other=0.0)
            act = gated_act(gate, tl.load(x_ptr + K + ks, mask=kmask, other=0.0), GELU_TANH)
            x = tl.where(rows[:, None] == 0, act[None, :], tl.zeros([BLOCK_M, BLOCK_K], dtype=act.dtype))
        else:
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=xmask, other=0.0)
            if GATED:
                up = tl.load(x_ptr + rows[:, None] * stride_xm + K + ks[None, :], mask=xmask, other=0.0)
                x = gated_act(x, up, GELU_TANH)
        w = tl.load(w_ptr + cols[:, None] * stride_wn + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(x, tl.trans(w))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    omask = rmask[:, None] & cmask[None, :]
    tl.store(out_ptr + split * stride_os + rows[:, None] * stride_om + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=omask)
    if REDUCE:
        # NOTE: every thread's partial is stored before the ticket is taken (barrier, then acq_rel), and the last
        # split reads the others' partials from L2 (.cg): the sum is in split order whichever split ends last
        tl.debug_barrier()
        ticket = tl.atomic_add(tickets_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT_K - 1:
            total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(out_ptr + s * stride_os + rows[:, None] * stride_om + cols[None, :], mask=omask,
                                 other=0.0, cache_modifier=".cg")
            if REDUCE_BIAS:
                total += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], total.to(y_ptr.dtype.element_ty), mask=omask)
            tl.store(tickets_ptr + pid_n, 0)  # NOTE: every split has taken its ticket: the next call starts at 0


@triton.jit
def _sum_splits_kernel(
    part_ptr, bias_ptr, y_ptr, N, stride_ps, stride_pm, stride_ym,
    SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, USE_PDL: tl.constexpr,
):
    wait_for_previous(USE_PDL)
    m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + s * stride_ps + m * stride_pm + cols, mask=cmask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + cols, acc.to(y_ptr.dtype.element_ty), mask=cmask)


class SplitOutput(NamedTuple):
    """Where a weight-streaming kernel writes: y itself (one split) or fp32 partials [split_k, M, N]."""

    out: torch.Tensor
    stride_os: int
    stride_om: int
    k_per_split: int  # a whole number of K steps, so no step straddles two splits

    @property
    def direct(self) -> bool:
        return self.stride_os == 0


def split_output(y: torch.Tensor, k: int, split_k: int, block_k: int) -> SplitOutput:
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    if split_k == 1:
        return SplitOutput(y, 0, y.stride(0), k_per_split)
    out = torch.empty((split_k, *y.shape), dtype=torch.float32, device=y.device)
    return SplitOutput(out, out.stride(0), out.stride(1), k_per_split)


def sum_splits(parts: SplitOutput, y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = the partials summed in split order (+ bias); y as it is when the kernel wrote it directly."""
    if not parts.direct:
        block, (split_k, m, n) = 1024, parts.out.shape
        _sum_splits_kernel[(m, triton.cdiv(n, block))](
            parts.out, bias if bias is not None else parts.out, y, n, parts.out.stride(0), parts.out.stride(1),
            y.stride(0), SPLIT_K=split_k, BLOCK=block, HAS_BIAS=bias is not None, num_warps=4,
            **launch_options(y),
        )
    return y


def split_k_for(programs: int, k: int, block_k: int, device: torch.device, per_sm: float = 1.5) -> int:
    """K splits (powers of two) until there are ~``per_sm`` programs per streaming multiprocessor, each split still
    streaming >= 2 K steps."""
    split = 1
    while programs * split < per_sm * sm_count(device) and k // (split * 2) >= 2 * block_k:
        split *= 2
    return split


@functools.cache
def skinny_config(n: int, k: int, device: torch.device) -> SkinnyConfig:
    """Tiles from benchmarks/skinny_gemm_sweep.py on the H200: 64 rows of w by 128 of K per step, and K split until
    there are ~1.5 programs per streaming multiprocessor (each split still streams >= 2 blocks of K)."""
    block_n, block_k = 64, 128
    return SkinnyConfig(block_n, block_k, split_k_for(triton.cdiv(n, block_n), k, block_k, device), 4, 3)


GATED_ACTIVATIONS = ("silu", "gelu_tanh")


def split_tickets(n: int, k: int, device: torch.device) -> torch.Tensor:
    """Zeroed tickets for one weight's column tiles: ``skinny_gemm(..., tickets=)`` then sums K splits in-kernel.

    NOTE: owned by one weight (its layer) and allocated before any graph capture: a call leaves them zero again,
    but two calls running at once (two streams) must not share them.
    """
    return torch.zeros(triton.cdiv(n, skinny_config(n, k, device).block_n), dtype=torch.int32, device=device)


def skinny_gemm(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, config: SkinnyConfig | None = None,
    gated: str | None = None, tickets: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] (M <= 16, rows contiguous) @ w [N, K].T (+ bias [N]) -> [M, N] in x's dtype.

    ``gated`` (one of GATED_ACTIVATIONS): x is [M, 2K] laid out [gate | up] and the product is of act(gate) * up,
    the activation applied as each tile is loaded (no separate activation kernel, no activated tensor in memory).
    ``tickets`` (``split_tickets``): K splits are summed by the GEMM's last split per tile, not a second kernel.
    """
    m, k = x.shape[0], w.shape[1]
    n = w.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"skinny_gemm takes at most {MAX_ROWS} rows (got {m})")
    if gated is not None and gated not in GATED_ACTIVATIONS:
        raise ValueError(f"unknown gated activation {gated!r}; known: {', '.join(GATED_ACTIVATIONS)}")
    if x.shape[1] != (2 * k if gated else k):
        raise ValueError(f"x has {x.shape[1]} columns but w has {k}" + (" (gated: x is [gate | up])" if gated else ""))
    if x.stride(1) != 1:
        x = x.contiguous()
    if w.stride(1) != 1:
        raise ValueError("w's rows must be contiguous")
    cfg = config or skinny_config(n, k, x.device)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    parts = split_output(y, k, cfg.split_k, cfg.block_k)
    n_tiles = triton.cdiv(n, cfg.block_n)
    reduce = not parts.direct and tickets is not None
    if tickets is not None and (tickets.numel() < n_tiles or tickets.dtype != torch.int32):
        raise ValueError(f"tickets must be {n_tiles} int32 zeros (split_tickets), got {tuple(tickets.shape)} "
                         f"{tickets.dtype}")
    _skinny_gemm_kernel[(n_tiles, cfg.split_k)](
        x, w, parts.out, bias if bias is not None else x, y, tickets if reduce else y, m, n, k, parts.k_per_split,
        x.stride(0), w.stride(0), parts.stride_os, parts.stride_om, y.stride(0),
        BLOCK_M=MAX_ROWS, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, UPCAST=upcast_dot(x),
        HAS_BIAS=parts.direct and bias is not None, GATED=gated is not None, GELU_TANH=gated == "gelu_tanh",
        ONE_ROW=m == 1,
        SPLIT_K=cfg.split_k, REDUCE=reduce, REDUCE_BIAS=reduce and bias is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(x),
    )
    return y if reduce else sum_splits(parts, y, bias)
