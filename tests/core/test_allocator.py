"""TokenAllocator: slot/page allocation, page alignment of extend/decode, all-or-nothing, double-free detection."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl.core.memory.allocator import TokenAllocator


@pytest.mark.parametrize("page_size", [1, 4])
def test_allocated_slots_avoid_the_padding_sink_and_cover_the_pool(page_size: int) -> None:
    alloc = TokenAllocator(32, page_size)
    slots = alloc.alloc(32)
    assert slots is not None and slots.dtype == torch.int64
    assert sorted(slots.tolist()) == list(range(page_size, 32 + page_size))
    assert alloc.available_size() == 0
    assert alloc.alloc(page_size) is None


def test_alloc_beyond_capacity_returns_none_and_takes_nothing() -> None:
    alloc = TokenAllocator(8, 1)
    assert alloc.alloc(9) is None
    assert alloc.available_size() == 8
    assert alloc.alloc(0) is not None and alloc.available_size() == 8


def test_alloc_of_a_partial_page_is_rejected() -> None:
    alloc = TokenAllocator(16, 4)
    with pytest.raises(ValueError, match="alloc_extend"):
        alloc.alloc(3)
    pages = alloc.alloc(8)
    assert pages is not None
    assert pages.view(2, 4).sub(pages.view(2, 4)[:, :1]).tolist() == [[0, 1, 2, 3]] * 2
    assert all(int(p) % 4 == 0 for p in pages.view(2, 4)[:, 0])


def test_alloc_extend_fills_the_open_page_before_taking_new_pages() -> None:
    alloc = TokenAllocator(32, 4)
    first = alloc.alloc_extend([0], [6], [-1])
    assert first is not None and first.numel() == 6
    # token j sits at offset j % 4 of its page
    assert [int(s) % 4 for s in first] == [0, 1, 2, 3, 0, 1]
    assert alloc.available_size() == 32 - 8
    more = alloc.alloc_extend([6], [11], [int(first[-1])])
    assert more is not None
    assert more[:2].tolist() == [int(first[-1]) + 1, int(first[-1]) + 2]  # rest of the open page
    assert [int(s) % 4 for s in more] == [2, 3, 0, 1, 2]
    assert alloc.available_size() == 32 - 12


def test_alloc_extend_concatenates_requests_in_order_with_per_request_alignment() -> None:
    alloc = TokenAllocator(64, 4)
    a = alloc.alloc_extend([0], [3], [-1])
    assert a is not None
    out = alloc.alloc_extend([3, 0, 8], [5, 2, 12], [int(a[-1]), -1, -1])
    # NOTE: request 3 (prefix 8, last_loc -1) is invalid only when prefix_len % page_size != 0; 8 is aligned.
    assert out is not None and out.numel() == 2 + 2 + 4
    positions = [3, 4, 0, 1, 8, 9, 10, 11]
    assert [int(s) % 4 for s in out] == [p % 4 for p in positions]
    assert int(out[0]) == int(a[-1]) + 1
    assert len(set(out.tolist()) | set(a.tolist())) == 3 + 8


def test_alloc_extend_is_all_or_nothing() -> None:
    alloc = TokenAllocator(16, 4)
    assert alloc.alloc_extend([0, 0], [8, 12], [-1, -1]) is None
    assert alloc.available_size() == 16
    assert alloc.alloc_extend([0, 0], [8, 8], [-1, -1]) is not None
    assert alloc.available_size() == 0


def test_alloc_extend_rejects_a_last_loc_at_the_wrong_page_offset() -> None:
    alloc = TokenAllocator(16, 4)
    with pytest.raises(ValueError, match="last_loc"):
        alloc.alloc_extend([2], [4], [4])  # token 1 cannot sit at offset 0
    with pytest.raises(ValueError, match="last_loc"):
        alloc.alloc_extend([2], [4], [-1])


def test_alloc_decode_takes_a_new_page_only_at_a_page_boundary() -> None:
    alloc = TokenAllocator(16, 4)
    pre = alloc.alloc_extend([0, 0], [4, 3], [-1, -1])
    assert pre is not None and alloc.available_size() == 8
    # request 0 writes token 4 (new page), request 1 writes token 3 (same page)
    out = alloc.alloc_decode([5, 4], [int(pre[3]), int(pre[-1])])
    assert out is not None
    assert int(out[0]) % 4 == 0 and int(out[0]) // 4 not in {int(s) // 4 for s in pre}
    assert int(out[1]) == int(pre[-1]) + 1
    assert alloc.available_size() == 4


def test_alloc_decode_is_all_or_nothing() -> None:
    alloc = TokenAllocator(8, 4)
    assert alloc.alloc(8) is not None
    assert alloc.alloc_decode([1], [-1]) is None
    assert alloc.available_size() == 0


@pytest.mark.parametrize("page_size", [1, 4])
def test_free_returns_whole_pages(page_size: int) -> None:
    alloc = TokenAllocator(16, page_size)
    slots = alloc.alloc_extend([0], [6], [-1])
    assert slots is not None
    used = 16 - alloc.available_size()
    alloc.free(slots)
    assert alloc.available_size() == 16
    assert used == (8 if page_size == 4 else 6)


@pytest.mark.parametrize("page_size", [1, 4])
def test_double_free_raises(page_size: int) -> None:
    alloc = TokenAllocator(16, page_size)
    slots = alloc.alloc(8)
    assert slots is not None
    alloc.free(slots[:page_size])
    with pytest.raises(RuntimeError, match="twice"):
        alloc.free(slots[:page_size])
    with pytest.raises(RuntimeError, match="twice"):
        alloc.free(torch.cat([slots[-1:], slots[-1:]]))
    assert alloc.available_size() == 8 + page_size


def test_free_of_the_sink_or_out_of_range_slots_raises() -> None:
    alloc = TokenAllocator(8, 4)
    with pytest.raises(ValueError):
        alloc.free(torch.tensor([0]))
    with pytest.raises(ValueError):
        alloc.free(torch.tensor([12]))


def test_clear_frees_everything() -> None:
    alloc = TokenAllocator(12, 4)
    assert alloc.alloc(12) is not None
    alloc.clear()
    assert alloc.available_size() == 12
    assert sorted(alloc.alloc(12).tolist()) == list(range(4, 16))  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None)
@given(
    page_size=st.sampled_from([1, 4]),
    ops=st.lists(
        st.tuples(st.sampled_from(["extend", "decode", "free"]), st.integers(0, 7), st.integers(1, 9)),
        max_size=40,
    ),
)
def test_random_requests_keep_slots_aligned_disjoint_and_counted(
    page_size: int, ops: list[tuple[str, int, int]]
) -> None:
    """Invariant: every token's slot sits at its position's page offset, no slot is handed out twice, and free
    slots + pages held by live requests always equal the pool."""
    size = 48
    alloc = TokenAllocator(size, page_size)
    reqs: list[list[int]] = []  # slots of each live request's tokens, in position order
    for op, pick, n in ops:
        if op == "extend" or not reqs:
            prefix = reqs[pick % len(reqs)] if reqs and pick % 2 else None
            plen = len(prefix) if prefix else 0
            last = prefix[-1] if prefix else -1
            out = alloc.alloc_extend([plen], [plen + n], [last])
            if out is not None:
                if prefix is not None:
                    prefix.extend(out.tolist())
                else:
                    reqs.append(out.tolist())
        elif op == "decode":
            r = reqs[pick % len(reqs)]
            out = alloc.alloc_decode([len(r) + 1], [r[-1]])
            if out is not None:
                r.append(int(out[0]))
        else:
            alloc.free(torch.tensor(reqs.pop(pick % len(reqs))))
        held = [s for r in reqs for s in r]
        assert len(held) == len(set(held))
        assert all(s % page_size == j % page_size for r in reqs for j, s in enumerate(r))
        pages = {s // page_size for s in held}
        assert 0 not in pages
        assert alloc.available_size() + len(pages) * page_size == size
        mask = alloc.free_slot_mask()
        assert not any(bool(mask[s]) for s in held)


@pytest.mark.parametrize("page_size", [1, 4])
def test_a_small_free_leaves_the_allocator_as_the_tensor_path_does(page_size: int) -> None:
    """``free`` of a few slots takes a Python path (``small_free``); both paths push the same pages in the same order,
    so every later allocation is the same, and both refuse the same bad frees."""
    states = []
    for small_free in (0, 64):
        rng = random.Random(page_size)
        alloc = TokenAllocator(64, page_size)
        alloc.small_free = small_free
        slots = alloc.alloc(48)
        assert slots is not None
        pages = slots.view(-1, page_size)[torch.randperm(48 // page_size, generator=torch.Generator().manual_seed(1))]
        for chunk in pages.split(3):
            alloc.free(chunk.reshape(-1)[torch.tensor(rng.sample(range(chunk.numel()), chunk.numel()))])
        with pytest.raises(RuntimeError, match="twice"):
            alloc.free(pages[0])
        with pytest.raises(RuntimeError, match="twice"):
            again = alloc.alloc(page_size)
            assert again is not None
            alloc.free(torch.cat([again, again]))
        with pytest.raises(ValueError, match="outside"):
            alloc.free(torch.tensor([0]))
        rest = alloc.alloc(40)
        assert rest is not None
        states.append((alloc.available_size(), alloc.free_slot_mask().tolist(), rest.tolist()))
    assert states[0] == states[1]
