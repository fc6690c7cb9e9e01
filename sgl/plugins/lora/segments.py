"""A batch's adapter layout: which rows run on which device slot, as segments and as per-slot row lists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class BatchSegments(NamedTuple):
    """Runs of consecutive rows on one adapter slot; base-model rows belong to no segment.

    NOTE: built fresh for every forward (never written in place), so a step prepared while the previous one still
    runs (overlap) cannot change what the running step reads."""

    seg_start: torch.Tensor  # [nseg] int32, device: first row of each segment
    seg_len: torch.Tensor  # [nseg] int32
    seg_slot: torch.Tensor  # [nseg] int32, the device slot of each segment's adapter
    max_seg_len: int
    slot_rows: dict[int, torch.Tensor]  # slot -> int64 row indices on the device (the reference's gather)

    @property
    def empty(self) -> bool:
        return not self.slot_rows


def build_segments(row_counts: Sequence[int], row_slots: Sequence[int], device: torch.device) -> BatchSegments:
    """``row_counts[i]`` rows of request i run on slot ``row_slots[i]`` (-1: the base model)."""
    starts: list[int] = []
    lens: list[int] = []
    slots: list[int] = []
    rows: dict[int, list[int]] = {}
    pos = 0
    for count, slot in zip(row_counts, row_slots):
        if slot >= 0 and count > 0:
            if slots and slots[-1] == slot and starts[-1] + lens[-1] == pos:
                lens[-1] += count
            else:
                starts.append(pos)
                lens.append(count)
                slots.append(slot)
            rows.setdefault(slot, []).extend(range(pos, pos + count))
        pos += count

    def dev(v: list[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(v, dtype=dtype).to(device, non_blocking=True)

    return BatchSegments(
        dev(starts, torch.int32), dev(lens, torch.int32), dev(slots, torch.int32), max(lens, default=0),
        {s: dev(r, torch.int64) for s, r in rows.items()},
    )
