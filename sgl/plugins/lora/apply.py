"""The low-rank update of one layer for one batch: the torch reference and the Triton segment GEMMs.

Both compute, for every adapter row r on slot s, ``out[r, slice_k] += (x[r] @ A[s, k*R:(k+1)*R].T) @ B_k[s].T``,
where A stacks the slices' A matrices (zero-padded to the pool's rank R) and B_k already carries the scaling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sgl.core.model.linear import OutputSlice
from sgl.plugins.lora.segments import BatchSegments

ApplyFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, Sequence[torch.Tensor], Sequence[OutputSlice], int, BatchSegments],
    None,
]


def apply_reference(
    x: torch.Tensor, out: torch.Tensor, a: torch.Tensor, bs: Sequence[torch.Tensor], slices: Sequence[OutputSlice],
    rank: int, seg: BatchSegments,
) -> None:
    """Per adapter slot: gather its rows, shrink, expand each slice, scatter-add (in place into ``out``)."""
    for slot, rows in seg.slot_rows.items():
        y = x.index_select(0, rows).float() @ a[slot].float().t()
        for k, sl in enumerate(slices):
            delta = y[:, k * rank:(k + 1) * rank] @ bs[k][slot].float().t()
            out[:, sl.offset:sl.offset + sl.size].index_add_(0, rows, delta.to(out.dtype))


def apply_triton(
    x: torch.Tensor, out: torch.Tensor, a: torch.Tensor, bs: Sequence[torch.Tensor], slices: Sequence[OutputSlice],
    rank: int, seg: BatchSegments,
) -> None:
    """One shrink over every slice at once, then one expand over every slice's columns of ``out`` (summing the
    shrink's split-K partials as it reads them): two launches per layer."""
    from sgl.kernels.lora import sgmv_expand_slices, sgmv_shrink_partials

    x2 = x if x.stride(-1) == 1 else x.contiguous()
    y = sgmv_shrink_partials(x2, a, seg.seg_start, seg.seg_len, seg.seg_slot, seg.max_seg_len, seg.row_index)
    sgmv_expand_slices(y, bs, out, [sl.offset for sl in slices], seg.seg_start, seg.seg_len, seg.seg_slot,
                       seg.max_seg_len, seg.row_index)
