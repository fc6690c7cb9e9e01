"""Segmented low-rank GEMMs for multi-LoRA batches (SGMV-style shrink and expand).

A batch's tokens fall into segments, each a run of consecutive rows on one adapter slot (a request's new tokens,
or neighbouring requests on the same adapter). ``shrink`` computes ``y[seg] = x[seg] @ A[slot].T`` (the rank-sized
intermediate, every slice of a merged layer at once) and ``expand`` adds ``y[seg] @ B[slot].T`` into one output
slice. One program per (segment, column block) walks its segment's rows, so the kernels never see a row of another
adapter and base-model rows (in no segment) are never touched; a decode-sized shrink also splits K over programs
(``shrink_splits``).

With ``row_index``, segment positions name batch rows through it (position p is row ``row_index[p]``): a decode
graph's batch keeps its rows in request order, and its segments (one per adapter slot, sized at replay) sort them by
slot without moving the data.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels._common import upcast_dot

BLOCK_M = 16
LONG_BLOCK_M = 64  # the shrink's rows per tile for segments of a prefill's length


def block_m(max_seg_len: int, row_index: torch.Tensor | None) -> int:
    """The shrink's tile height. It re-reads its A tiles for every tile of rows: long eager segments (a prefill's
    requests) take tall tiles, which read A 4x less; decode segments (a few rows; graph segments, sized for the
    largest batch, hold a few rows each) keep short ones. (The expand loads its B tile once per program, so its
    height buys it nothing and would only raise its register use.)"""
    return LONG_BLOCK_M if row_index is None and max_seg_len >= LONG_BLOCK_M else BLOCK_M


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, y_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, row_index_ptr,
    N, K, K_PER_SPLIT, stride_xm, stride_as, stride_an, stride_ym, stride_ys,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, HAS_ROW_INDEX: tl.constexpr,
):
    seg = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    start = tl.load(seg_start_ptr + seg)
    length = tl.load(seg_len_ptr + seg)
    slot = tl.load(seg_slot_ptr + seg).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    a_base = a_ptr + slot * stride_as
    k_lo = split * K_PER_SPLIT  # NOTE: K_PER_SPLIT is a multiple of BLOCK_K, so the splits' blocks never overlap
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    y_base = y_ptr + split.to(tl.int64) * stride_ys
    for m0 in range(0, length, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        rmask = rows < length
        if HAS_ROW_INDEX:
            grow = tl.load(row_index_ptr + start + rows, mask=rmask, other=0).to(tl.int64)
        else:
            grow = (start + rows).to(tl.int64)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            x = tl.load(x_ptr + grow[:, None] * stride_xm + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                        other=0.0)
            a = tl.load(a_base + cols[:, None] * stride_an + ks[None, :], mask=cmask[:, None] & kmask[None, :],
                        other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
                a = a.to(tl.float32)
            else:
                a = a.to(x.dtype)
            acc += tl.dot(x, tl.trans(a), input_precision=PRECISION)
        tl.store(y_base + grow[:, None] * stride_ym + cols[None, :], acc, mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _expand_kernel(
    y_ptr, b_ptr, out_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, row_index_ptr,
    N, R, SPLITS, stride_ys, stride_ym, stride_bs, stride_bn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, HAS_ROW_INDEX: tl.constexpr,
):
    seg = tl.program_id(0)
    pid_n = tl.program_id(1)
    start = tl.load(seg_start_ptr + seg)
    length = tl.load(seg_len_ptr + seg)
    slot = tl.load(seg_slot_ptr + seg).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    ks = tl.arange(0, BLOCK_R)
    kmask = ks < R
    b = tl.load(b_ptr + slot * stride_bs + cols[:, None] * stride_bn + ks[None, :],
                mask=cmask[:, None] & kmask[None, :], other=0.0)
    b = b.to(tl.float32)
    for m0 in range(0, length, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        rmask = rows < length
        if HAS_ROW_INDEX:
            grow = tl.load(row_index_ptr + start + rows, mask=rmask, other=0).to(tl.int64)
        else:
            grow = (start + rows).to(tl.int64)
        ymask = rmask[:, None] & kmask[None, :]
        y = tl.load(y_ptr + grow[:, None] * stride_ym + ks[None, :], mask=ymask, other=0.0)
        for sp in range(1, SPLITS):  # NOTE: the shrink's split-K partials, summed in a fixed order
            y += tl.load(y_ptr + sp * stride_ys + grow[:, None] * stride_ym + ks[None, :], mask=ymask, other=0.0)
        delta = tl.dot(y, tl.trans(b), input_precision="ieee")
        optr = out_ptr + grow[:, None] * stride_om + cols[None, :]
        omask = rmask[:, None] & cmask[None, :]
        cur = tl.load(optr, mask=omask, other=0.0)
        tl.store(optr, (cur.to(tl.float32) + delta).to(cur.dtype), mask=omask)


def _precision(x: torch.Tensor) -> str:
    """fp32 activations get fp32 dots (TF32 would differ from the reference in greedy decoding); bf16/fp16 dots are
    exact products with fp32 accumulation either way."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


SPLIT_K_MAX_ROWS = 64  # batches up to this many rows (decode) split K; larger ones have rows enough to fill the device
SPLIT_K_MIN = 256  # the least of K one split streams
SPLIT_K_MAX = 32


def shrink_splits(rows: int, k: int) -> int:
    """How many programs share one segment's K for a batch of ``rows``.

    A decode batch has one or a few rows per segment, so without splitting, one program per column block streams a
    whole A [n, K] alone (all of it for a rank-64 down projection, K = 14336) while the rest of the device idles;
    splitting K puts that read on many programs, whose fp32 partials the expand sums in a fixed order (the result
    does not depend on scheduling)."""
    if rows > SPLIT_K_MAX_ROWS:
        return 1
    return max(1, min(SPLIT_K_MAX, k // SPLIT_K_MIN))


def sgmv_shrink_partials(
    x: torch.Tensor, a: torch.Tensor, seg_start: torch.Tensor, seg_len: torch.Tensor, seg_slot: torch.Tensor,
    max_seg_len: int, row_index: torch.Tensor | None = None, splits: int | None = None, zero_rest: bool = False,
) -> torch.Tensor:
    """x [T, K], a [S, N, K] -> fp32 partials [splits, T, N] whose sum over the first dim is x[seg] @ a[slot].T;
    ``sgmv_expand`` takes them as they are (one kernel fewer than summing here). Rows outside every segment are
    left unwritten (no kernel reads them) unless ``zero_rest``. ``splits``: the split-K factor (default
    ``shrink_splits(T, K)``)."""
    t, k = x.shape
    n = a.shape[1]
    nseg = seg_start.numel()
    if nseg == 0 or max_seg_len == 0:
        return torch.zeros(1, t, n, dtype=torch.float32, device=x.device)
    splits = shrink_splits(t, k) if splits is None else splits
    block_k = 64
    k_per_split = triton.cdiv(triton.cdiv(k, splits), block_k) * block_k
    splits = triton.cdiv(k, k_per_split)
    partial = (torch.zeros if zero_rest else torch.empty)(splits, t, n, dtype=torch.float32, device=x.device)
    block_n = _block(n, 16, 64)
    grid = (nseg, triton.cdiv(n, block_n), splits)
    _shrink_kernel[grid](
        x, a, partial, seg_start, seg_len, seg_slot, seg_start if row_index is None else row_index,
        n, k, k_per_split, x.stride(0), a.stride(0), a.stride(1), partial.stride(1), partial.stride(0),
        BLOCK_M=block_m(max_seg_len, row_index), BLOCK_N=block_n, BLOCK_K=block_k, UPCAST=upcast_dot(x),
        PRECISION=_precision(x), HAS_ROW_INDEX=row_index is not None,
    )
    return partial


def sgmv_shrink(
    x: torch.Tensor, a: torch.Tensor, seg_start: torch.Tensor, seg_len: torch.Tensor, seg_slot: torch.Tensor,
    max_seg_len: int, row_index: torch.Tensor | None = None, splits: int | None = None,
) -> torch.Tensor:
    """x [T, K], a [S, N, K] -> fp32 y [T, N]; rows outside every segment are 0. Segments are int32 tensors."""
    partial = sgmv_shrink_partials(x, a, seg_start, seg_len, seg_slot, max_seg_len, row_index, splits,
                                   zero_rest=True)
    return partial[0] if partial.shape[0] == 1 else partial.sum(0)


def sgmv_expand(
    y: torch.Tensor, b: torch.Tensor, out: torch.Tensor, seg_start: torch.Tensor, seg_len: torch.Tensor,
    seg_slot: torch.Tensor, max_seg_len: int, row_index: torch.Tensor | None = None,
) -> None:
    """out[seg] += y[seg] @ b[slot].T in place (fp32 dots: the expand is bound by memory, not by its
    flops): y [T, R] fp32, or the shrink's split-K partials [splits, T, R] (column views are fine), b [S, N, R],
    out [T, N] (a column view of a wider output is fine; its columns must be unit-stride)."""
    nseg = seg_start.numel()
    if nseg == 0 or max_seg_len == 0:
        return
    y3 = y if y.dim() == 3 else y.unsqueeze(0)
    n, r = b.shape[1], b.shape[2]
    assert y3.stride(2) == 1 and b.stride(2) == 1 and out.stride(1) == 1, "inner dims must be contiguous"
    block_n = _block(n, 16, 64)
    grid = (nseg, triton.cdiv(n, block_n))
    _expand_kernel[grid](
        y3, b, out, seg_start, seg_len, seg_slot, seg_start if row_index is None else row_index,
        n, r, y3.shape[0], y3.stride(0), y3.stride(1), b.stride(0), b.stride(1), out.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_R=_block(r, 16, 256), HAS_ROW_INDEX=row_index is not None,
    )
