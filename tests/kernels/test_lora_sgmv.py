"""The SGMV shrink/expand kernels add exactly the reference's per-adapter low-rank updates, segment by segment,
and leave base-model rows untouched."""

from __future__ import annotations

import pytest
import torch

from sgl.core.model.linear import OutputSlice
from sgl.plugins.lora.apply import apply_reference, apply_triton
from sgl.plugins.lora.segments import build_segments


def _case(device: torch.device, dtype: torch.dtype, counts: list[int], slots: list[int], in_f: int,
          slice_sizes: list[int], rank: int, num_slots: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    t = sum(counts)
    x = torch.randn(t, in_f, generator=gen).to(device, dtype)
    a = (torch.randn(num_slots, len(slice_sizes) * rank, in_f, generator=gen) * 0.2).to(device, dtype)
    bs = [(torch.randn(num_slots, n, rank, generator=gen) * 0.2).to(device, dtype) for n in slice_sizes]
    offsets = [sum(slice_sizes[:i]) for i in range(len(slice_sizes))]
    slices = [OutputSlice(i, o, n) for i, (o, n) in enumerate(zip(offsets, slice_sizes))]
    out = torch.randn(t, sum(slice_sizes), generator=gen).to(device, dtype)
    seg = build_segments(counts, slots, device)
    return x, a, bs, slices, out, seg


@pytest.mark.parametrize(
    ("counts", "slots", "slice_sizes", "rank"),
    [
        ([1, 1, 1, 1], [0, -1, 1, 0], [48], 8),  # decode: one row per request, a base row between adapters
        ([5, 17, 3], [1, 1, 0], [32, 16, 16], 4),  # prefill of a merged qkv: neighbours on one slot fuse
        ([40, 2, 9], [2, -1, 0], [70, 70], 16),  # gate|up with sizes off the block grid, a long segment
        ([70, 3, 64], [1, -1, 0], [48], 8),  # prefill-length segments take the tall tiles (and a ragged last one)
        ([3, 3], [-1, -1], [24], 8),  # base rows only: nothing is added
    ],
)
def test_triton_sgmv_matches_reference(
    counts: list[int], slots: list[int], slice_sizes: list[int], rank: int, device: torch.device
) -> None:
    x, a, bs, slices, out, seg = _case(device, torch.float32, counts, slots, 96, slice_sizes, rank, 3, seed=7)
    ref = out.clone()
    apply_reference(x, ref, a, bs, slices, rank, seg)
    got = out.clone()
    apply_triton(x, got, a, bs, slices, rank, seg)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    pos = 0
    for c, s in zip(counts, slots):  # base rows keep their GEMM output bit for bit
        if s < 0:
            assert torch.equal(got[pos:pos + c], out[pos:pos + c])
        pos += c


def test_triton_sgmv_bf16_within_rounding(device: torch.device) -> None:
    x, a, bs, slices, out, seg = _case(device, torch.bfloat16, [6, 1, 4], [0, 1, 2], 128, [64, 32], 16, 3, seed=3)
    ref = out.float().clone()
    apply_reference(x.float(), ref, a.float(), [b.float() for b in bs], slices, 16, seg)
    got = out.clone()
    apply_triton(x, got, a, bs, slices, 16, seg)
    torch.testing.assert_close(got.float(), ref, atol=ref.abs().max().item() * 2**-6, rtol=0)


def test_reference_equals_dense_formula(device: torch.device) -> None:
    """The reference itself against the plain formula out += x A^T B^T, row by row."""
    counts, slots = [2, 3, 1], [1, -1, 0]
    x, a, bs, slices, out, seg = _case(device, torch.float32, counts, slots, 32, [8, 8], 4, 2, seed=11)
    ref = out.clone()
    apply_reference(x, ref, a, bs, slices, 4, seg)
    want = out.clone()
    row = 0
    for c, s in zip(counts, slots):
        for r in range(row, row + c):
            if s >= 0:
                for k, sl in enumerate(slices):
                    want[r, sl.offset:sl.offset + sl.size] += (x[r] @ a[s, k * 4:(k + 1) * 4].t()) @ bs[k][s].t()
        row += c
    torch.testing.assert_close(ref, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slots", [[2, -1, 0, 2, 1, -1, 0], [-1, -1, -1], [1], [0, 0, 0, 0, 0, 0, 0, 0]])
def test_graph_segments_sort_rows_by_slot_through_the_row_index(slots: list[int], device: torch.device) -> None:
    """A decode graph's segments (one per slot, rows reached through row_index) add what the batch's own segments
    add; the rows a padded graph adds past the batch stay untouched."""
    from sgl.plugins.lora.segments import GraphSegments

    num_slots, max_rows, padded = 3, 8, 8
    x, a, bs, slices, _, seg = _case(device, torch.float32, [1] * len(slots), slots, 64, [40, 24], 8, num_slots,
                                     seed=11)
    gen = torch.Generator().manual_seed(12)
    x_pad = torch.cat([x, torch.randn(padded - len(slots), 64, generator=gen).to(device)])
    out = torch.randn(padded, 64, generator=gen).to(device)
    want = out.clone()
    apply_reference(x_pad[:len(slots)], want[:len(slots)], a, bs, slices, 8, seg)
    graph = GraphSegments(num_slots, max_rows, device)
    graph.fill(slots)
    got = out.clone()
    apply_triton(x_pad, got, a, bs, slices, 8, graph.segments)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(got[len(slots):], out[len(slots):])


def test_graph_segments_layout_is_sorted_by_slot_with_base_and_padding_rows_last() -> None:
    from sgl.plugins.lora.segments import GraphSegments

    layout = GraphSegments(3, 8, torch.device("cpu")).host_layout([2, -1, 0, 2])
    starts, lens, slots, order = layout[:3], layout[3:6], layout[6:9], layout[9:]
    assert lens.tolist() == [1, 0, 2] and starts.tolist() == [0, 1, 1] and slots.tolist() == [0, 1, 2]
    assert order.tolist() == [2, 0, 3, 1, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="9 rows exceed the graphs' 8"):
        GraphSegments(3, 8, torch.device("cpu")).fill([0] * 9)


@pytest.mark.parametrize("splits", [2, 3, 5])
def test_split_k_shrink_equals_one_split_and_the_reference(splits: int, device: torch.device) -> None:
    """Splitting K over programs (what decode batches get) sums to the unsplit shrink; base rows stay 0; the expand
    summing the partials as it reads them adds what it adds from the summed shrink."""
    from sgl.kernels.lora import sgmv_expand, sgmv_shrink, sgmv_shrink_partials

    counts, slots = [1, 1, 2, 1], [1, -1, 0, 1]
    x, a, bs, _, out, seg = _case(device, torch.float32, counts, slots, 320, [24], 8, 2, seed=5)
    args = (seg.seg_start, seg.seg_len, seg.seg_slot, seg.max_seg_len)
    one = sgmv_shrink(x, a, *args, splits=1)
    got = sgmv_shrink(x, a, *args, splits=splits)
    torch.testing.assert_close(got, one, atol=1e-5, rtol=1e-5)
    row = 0
    for c, s in zip(counts, slots):
        want = torch.zeros(c, 8, device=device) if s < 0 else x[row:row + c] @ a[s].t()
        torch.testing.assert_close(got[row:row + c], want, atol=1e-4, rtol=1e-4)
        row += c
    partials = sgmv_shrink_partials(x, a, *args, splits=splits)
    assert partials.shape == (splits, sum(counts), 8)
    summed, fused = out.clone(), out.clone()
    sgmv_expand(one, bs[0], summed, *args)
    sgmv_expand(partials, bs[0], fused, *args)
    torch.testing.assert_close(fused, summed, atol=1e-5, rtol=1e-5)
    assert torch.equal(fused[1], out[1])  # the base row: its unwritten partials are never read


def test_decode_rows_on_a_wide_projection_take_the_split_path_and_match_the_reference(device: torch.device) -> None:
    """apply_triton as a decode step runs it: K wide enough to split, a merged layer's slices, a base row."""
    from sgl.kernels.lora import shrink_splits

    counts, slots = [1, 1, 1, 1, 1], [0, 2, -1, 0, 1]
    x, a, bs, slices, out, seg = _case(device, torch.float32, counts, slots, 1024, [40, 24], 8, 3, seed=13)
    assert shrink_splits(len(counts), 1024) == 4
    ref = out.clone()
    apply_reference(x, ref, a, bs, slices, 8, seg)
    got = out.clone()
    apply_triton(x, got, a, bs, slices, 8, seg)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(got[2], out[2])


def test_split_k_only_for_decode_sized_batches() -> None:
    from sgl.kernels.lora import SPLIT_K_MAX, SPLIT_K_MAX_ROWS, shrink_splits

    assert shrink_splits(1, 14336) == SPLIT_K_MAX  # batch-1 decode of a wide down projection
    assert shrink_splits(SPLIT_K_MAX_ROWS, 4096) == 16
    assert shrink_splits(1, 128) == 1  # too narrow to split
    assert shrink_splits(SPLIT_K_MAX_ROWS + 1, 14336) == 1  # prefill-sized: one split, no partials


@pytest.mark.parametrize("rank", [16, 64])
def test_qkv_graph_step_one_expand_launch_over_three_slices_with_split_k_matches_the_reference(
    rank: int, device: torch.device
) -> None:
    """A decode graph's step on a merged q|k|v layer (slices off the column grid): one shrink split over K, one
    expand for all three slices, through the row index; base rows and the graph's padding rows stay untouched."""
    from sgl.kernels.lora import shrink_splits
    from sgl.plugins.lora.segments import GraphSegments

    slots, num_slots, padded, in_f = [2, -1, 0, 2, 1, -1, 0], 4, 10, 768
    assert shrink_splits(padded, in_f) == 3
    x, a, bs, slices, _, seg = _case(device, torch.float32, [1] * len(slots), slots, in_f, [72, 24, 24], rank,
                                     num_slots, seed=21)
    gen = torch.Generator().manual_seed(22)
    x_pad = torch.cat([x, torch.randn(padded - len(slots), in_f, generator=gen).to(device)])
    out = torch.randn(padded, 120, generator=gen).to(device)
    want = out.clone()
    apply_reference(x_pad[:len(slots)], want[:len(slots)], a, bs, slices, rank, seg)
    graph = GraphSegments(num_slots, 12, device)
    graph.fill(slots)
    got = out.clone()
    apply_triton(x_pad, got, a, bs, slices, rank, graph.segments)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for row in [1, 5, *range(len(slots), padded)]:
        assert torch.equal(got[row], out[row])


@pytest.mark.parametrize("rank", [16, 64])
def test_prefill_segments_spread_their_row_tiles_over_programs_and_match_the_reference(
    rank: int, device: torch.device
) -> None:
    """Prefill-length segments (several tall tiles each, a ragged last one) on a gate|up layer, a base request
    between them: every row tile, whichever program takes it, adds exactly the reference's update."""
    counts, slots = [150, 7, 130, 70], [1, -1, 0, 1]
    x, a, bs, slices, out, seg = _case(device, torch.float32, counts, slots, 128, [40, 40], rank, 2, seed=23)
    ref = out.clone()
    apply_reference(x, ref, a, bs, slices, rank, seg)
    got = out.clone()
    apply_triton(x, got, a, bs, slices, rank, seg)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(got[150:157], out[150:157])


def test_a_layer_of_more_slices_than_one_launch_takes_matches_the_reference(device: torch.device) -> None:
    from sgl.kernels.lora import MAX_SLICES

    sizes = [16, 24, 8, 32, 16]
    assert len(sizes) > MAX_SLICES
    x, a, bs, slices, out, seg = _case(device, torch.float32, [3, 1, 2], [0, -1, 1], 64, sizes, 8, 2, seed=25)
    ref = out.clone()
    apply_reference(x, ref, a, bs, slices, 8, seg)
    got = out.clone()
    apply_triton(x, got, a, bs, slices, 8, seg)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(got[3], out[3])
