"""Segmented low-rank GEMMs for multi-LoRA batches (SGMV-style shrink and expand).

A batch's tokens fall into segments, each a run of consecutive rows on one adapter slot (a request's new tokens,
or neighbouring requests on the same adapter). ``shrink`` computes ``y[seg] = x[seg] @ A[slot].T`` (the rank-sized
intermediate, every slice of a merged layer at once) and ``expand_slices`` adds ``y[seg] @ B_k[slot].T`` into every
output slice k, also in one launch: two launches per adapted layer. A program takes one (segment, column block) and
walks its segment's rows (an eager segment's row tiles spread over several programs), so the kernels never see a
row of another adapter and base-model rows (in no segment) are never touched; a decode-sized shrink also splits K
over programs (``shrink_splits``).

With ``row_index``, segment positions name batch rows through it (position p is row ``row_index[p]``): a decode
graph's batch keeps its rows in request order, and its segments (one per adapter slot, sized at replay) sort them by
slot without moving the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from sgl.kernels._common import sm_count, upcast_dot

BLOCK_M = 16
LONG_BLOCK_M = 64  # the shrink's rows per tile for segments of a prefill's length


def block_m(max_seg_len: int, row_index: torch.Tensor | None) -> int:
    """The shrink's tile height. It re-reads its A tiles for every tile of rows: long eager segments (a prefill's
    requests) take tall tiles, which read A 4x less; decode segments (a few rows; graph segments, sized for the
    largest batch, hold a few rows each) keep short ones. (The expand loads its B tile once per program, so its
    height buys it nothing and would only raise its register use.)"""
    return LONG_BLOCK_M if row_index is None and max_seg_len >= LONG_BLOCK_M else BLOCK_M


@triton.jit
def _segment_rows(row_index_ptr, start, rows, rmask, HAS_ROW_INDEX: tl.constexpr):
    """The batch rows of a segment's ``rows``: through the row index where one is given, else contiguous."""
    if HAS_ROW_INDEX:
        return tl.load(row_index_ptr + start + rows, mask=rmask, other=0).to(tl.int64)
    else:
        return (start + rows).to(tl.int64)


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, y_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, row_index_ptr,
    N, K, K_PER_SPLIT, SPLITS, stride_xm, stride_as, stride_an, stride_ym, stride_ys,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, HAS_ROW_INDEX: tl.constexpr,
):
    seg = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2) % SPLITS
    pid_m = tl.program_id(2) // SPLITS
    num_m = tl.num_programs(2) // SPLITS
    start = tl.load(seg_start_ptr + seg)
    length = tl.load(seg_len_ptr + seg)
    slot = tl.load(seg_slot_ptr + seg).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    a_base = a_ptr + slot * stride_as
    k_lo = split * K_PER_SPLIT  # NOTE: K_PER_SPLIT is a multiple of BLOCK_K, so the splits' blocks never overlap
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    y_base = y_ptr + split.to(tl.int64) * stride_ys
    for m0 in range(pid_m * BLOCK_M, length, num_m * BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        rmask = rows < length
        grow = _segment_rows(row_index_ptr, start, rows, rmask, HAS_ROW_INDEX)
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


@triton.jit(do_not_specialize=["N0", "N1", "N2", "OFF0", "OFF1", "OFF2", "stride_bs0", "stride_bs1", "stride_bs2",
                               "stride_bn0", "stride_bn1", "stride_bn2"])
def _expand_kernel(
    y_ptr, b0_ptr, b1_ptr, b2_ptr, out_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, row_index_ptr,
    N0, N1, N2, OFF0, OFF1, OFF2, NB0, NB1, R, stride_ys, stride_ym,
    stride_bs0, stride_bs1, stride_bs2, stride_bn0, stride_bn1, stride_bn2, stride_om,
    SPLITS: tl.constexpr, NUM_SLICES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr, HAS_ROW_INDEX: tl.constexpr, PARTIALS_IN_FLIGHT: tl.constexpr,
):
    seg = tl.program_id(0)
    pid_n = tl.program_id(1)  # column blocks of slice 0, then of slice 1, then of slice 2
    pid_m = tl.program_id(2)
    num_m = tl.num_programs(2)
    start = tl.load(seg_start_ptr + seg)
    length = tl.load(seg_len_ptr + seg)
    # NOTE: a graph's segments are one per slot, most of them empty at small batches: they skip the B tile
    if pid_m * BLOCK_M < length:
        slot = tl.load(seg_slot_ptr + seg).to(tl.int64)
        # NOTE: every value the runtime ifs below reassign is a tensor: a constexpr reassigned in a runtime if keeps
        # its first value when compiled (the interpreter would not show it)
        b_ptr = b0_ptr
        n = N0
        off = OFF0
        sbs = stride_bs0
        sbn = stride_bn0
        nb = pid_n
        k = pid_n * 0  # the slice, as a tensor
        if NUM_SLICES > 1:
            k += (pid_n >= NB0).to(tl.int32)
            if pid_n >= NB0:
                b_ptr = b1_ptr
                n = N1
                off = OFF1
                sbs = stride_bs1
                sbn = stride_bn1
                nb = pid_n - NB0
        if NUM_SLICES > 2:
            k += (pid_n >= NB0 + NB1).to(tl.int32)
            if pid_n >= NB0 + NB1:
                b_ptr = b2_ptr
                n = N2
                off = OFF2
                sbs = stride_bs2
                sbn = stride_bn2
                nb = pid_n - NB0 - NB1
        cols = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < n
        ks = tl.arange(0, BLOCK_R)
        kmask = ks < R
        b = tl.load(b_ptr + slot * sbs + cols[:, None] * sbn + ks[None, :],
                    mask=cmask[:, None] & kmask[None, :], other=0.0)
        b = b.to(tl.float32)
        ycol = k * R + ks  # this slice's rank columns of the shrink's output
        # NOTE: not software-pipelined: pipelined (as Triton does where SPLITS == 1, prefill's case) the rank-64
        # expand compiled to 255 registers and spilled (sm_90, Triton 3.9); the old runtime partials loop had
        # kept it from pipelining
        for m0 in tl.range(pid_m * BLOCK_M, length, num_m * BLOCK_M, num_stages=1):
            rows = m0 + tl.arange(0, BLOCK_M)
            rmask = rows < length
            grow = _segment_rows(row_index_ptr, start, rows, rmask, HAS_ROW_INDEX)
            ymask = rmask[:, None] & kmask[None, :]
            yptr = y_ptr + grow[:, None] * stride_ym + ycol[None, :]
            y = tl.load(yptr, mask=ymask, other=0.0)
            # NOTE: the shrink's split-K partials, summed in a fixed order, PARTIALS_IN_FLIGHT loads at a time (a loop
            # of one load per turn waited on each; unrolling all of them staged every one through shared memory)
            if SPLITS > 1:
                for sp0 in range(1, SPLITS, PARTIALS_IN_FLIGHT):
                    for j in tl.static_range(PARTIALS_IN_FLIGHT):
                        y += tl.load(yptr + (sp0 + j) * stride_ys, mask=ymask & (sp0 + j < SPLITS), other=0.0)
            delta = tl.dot(y, tl.trans(b), input_precision="ieee")
            optr = out_ptr + grow[:, None] * stride_om + off + cols[None, :]
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
    bm = block_m(max_seg_len, row_index)
    # NOTE: an eager segment's row tiles go to programs of their own (a prefill's segment is hundreds of rows, and
    # one program walking them all, over the whole K, left most of the device idle); a graph's segments are sized
    # for the largest batch but hold a few rows each, so there one program walks them
    row_programs = 1 if row_index is not None else triton.cdiv(max_seg_len, bm)
    grid = (nseg, triton.cdiv(n, block_n), splits * row_programs)
    _shrink_kernel[grid](
        x, a, partial, seg_start, seg_len, seg_slot, seg_start if row_index is None else row_index,
        n, k, k_per_split, splits, x.stride(0), a.stride(0), a.stride(1), partial.stride(1), partial.stride(0),
        BLOCK_M=bm, BLOCK_N=block_n, BLOCK_K=block_k, UPCAST=upcast_dot(x),
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
    """out[seg] += y[seg] @ b[slot].T in place: one slice (see ``sgmv_expand_slices``); y [T, R] or [splits, T, R]."""
    sgmv_expand_slices(y, [b], out, [0], seg_start, seg_len, seg_slot, max_seg_len, row_index)


MAX_SLICES = 3  # q|k|v
PARTIALS_IN_FLIGHT = 4  # the expand's split-K partial loads issued together


def sgmv_expand_slices(
    y: torch.Tensor, bs: Sequence[torch.Tensor], out: torch.Tensor, offsets: Sequence[int], seg_start: torch.Tensor,
    seg_len: torch.Tensor, seg_slot: torch.Tensor, max_seg_len: int, row_index: torch.Tensor | None = None,
) -> None:
    """For every slice k, out[seg, offsets[k]:offsets[k] + n_k] += y[seg, k*R:(k+1)*R] @ bs[k][slot].T in place,
    all slices in one launch (fp32 dots: the expand is bound by memory, not by its flops).

    y: fp32 [T, n_slices * R], or the shrink's split-K partials [splits, T, n_slices * R]; bs[k] [S, n_k, R];
    out [T, >= offsets[k] + n_k] (its columns unit-stride)."""
    nseg = seg_start.numel()
    if nseg == 0 or max_seg_len == 0:
        return
    y3 = y if y.dim() == 3 else y.unsqueeze(0)
    r = bs[0].shape[2]
    assert len(offsets) == len(bs) >= 1
    if len(bs) > MAX_SLICES:  # a layer of more slices than the kernel takes: a launch per MAX_SLICES of them
        for i in range(0, len(bs), MAX_SLICES):
            sgmv_expand_slices(y3[:, :, i * r:], bs[i:i + MAX_SLICES], out, offsets[i:i + MAX_SLICES], seg_start,
                               seg_len, seg_slot, max_seg_len, row_index)
        return
    assert all(b.shape[2] == r and b.stride(2) == 1 for b in bs), "slices share the rank; inner dims contiguous"
    assert y3.shape[2] >= len(bs) * r and y3.stride(2) == 1 and out.stride(1) == 1, "inner dims must be contiguous"
    block_n = _block(max(b.shape[1] for b in bs), 16, 64)
    nblocks = [triton.cdiv(b.shape[1], block_n) for b in bs]
    pad = MAX_SLICES - len(bs)  # unused slices repeat slice 0 (never selected: NUM_SLICES says how many are real)
    bp, offp, nbp = list(bs) + [bs[0]] * pad, list(offsets) + [offsets[0]] * pad, nblocks + [nblocks[0]] * pad
    cols = sum(nblocks)
    # NOTE: row tiles of eager segments split over programs only while the segments' column blocks leave the device
    # short of work (each such program re-reads its B tile)
    row_programs = 1
    if row_index is None:
        row_programs = min(triton.cdiv(max_seg_len, BLOCK_M), max(1, triton.cdiv(4 * sm_count(out.device),
                                                                                   nseg * cols)))
    grid = (nseg, cols, row_programs)
    _expand_kernel[grid](
        y3, bp[0], bp[1], bp[2], out, seg_start, seg_len, seg_slot, seg_start if row_index is None else row_index,
        bp[0].shape[1], bp[1].shape[1], bp[2].shape[1], offp[0], offp[1], offp[2], nbp[0], nbp[1], r,
        y3.stride(0), y3.stride(1), bp[0].stride(0), bp[1].stride(0), bp[2].stride(0),
        bp[0].stride(1), bp[1].stride(1), bp[2].stride(1), out.stride(0),
        SPLITS=y3.shape[0], NUM_SLICES=len(bs), BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_R=_block(r, 16, 256),
        HAS_ROW_INDEX=row_index is not None, PARTIALS_IN_FLIGHT=PARTIALS_IN_FLIGHT,
    )
