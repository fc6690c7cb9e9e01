"""A batch's adapter layout: which rows run on which device slot, as segments and as per-slot row lists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from sgl.core.transfer import to_device


class BatchSegments(NamedTuple):
    """Runs of consecutive rows on one adapter slot; base-model rows belong to no segment.

    NOTE: built fresh for every forward (never written in place), so a step prepared while the previous one still
    runs (overlap) cannot change what the running step reads."""

    seg_start: torch.Tensor  # [nseg] int32, device: first row of each segment
    seg_len: torch.Tensor  # [nseg] int32
    seg_slot: torch.Tensor  # [nseg] int32, the device slot of each segment's adapter
    max_seg_len: int
    slot_rows: dict[int, torch.Tensor]  # slot -> int64 row indices on the device (the reference's gather)
    row_index: torch.Tensor | None = None  # [rows] int32: segment position p is batch row row_index[p] (graphs)

    @property
    def empty(self) -> bool:
        return not self.slot_rows and self.row_index is None


def build_segments(
    row_counts: Sequence[int], row_slots: Sequence[int], device: torch.device, pinned: bool = False
) -> BatchSegments:
    """``row_counts[i]`` rows of request i run on slot ``row_slots[i]`` (-1: the base model). ``pinned``: the
    platform has pinned memory (the copies are then asynchronous; from pageable memory the driver may wait for the
    stream, which would stall the overlap schedule)."""
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
        return to_device(torch.tensor(v, dtype=dtype), device, pinned)

    return BatchSegments(
        dev(starts, torch.int32), dev(lens, torch.int32), dev(slots, torch.int32), max(lens, default=0),
        {s: dev(r, torch.int64) for s, r in rows.items()},
    )


class GraphSegments:
    """The segments a captured decode graph reads: one per device slot, over the batch's rows sorted by slot through
    ``row_index``, all in one device buffer that ``fill`` rewrites before each step (stream-ordered after the step
    before it, as the graph runner's own input copies are). Base-model rows sort last, outside every segment.

    NOTE: the shapes never change (``num_slots`` segments, ``max_rows`` rows), which is what lets a graph capture
    them; a slot without rows this step is a segment of length 0."""

    def __init__(self, num_slots: int, max_rows: int, device: torch.device, pinned: bool = False) -> None:
        self.num_slots, self.max_rows, self.pinned = num_slots, max_rows, pinned
        self.buffer = torch.zeros(3 * num_slots + max_rows, dtype=torch.int32, device=device)
        self.fill([])
        n = num_slots
        self.segments = BatchSegments(self.buffer[:n], self.buffer[n:2 * n], self.buffer[2 * n:3 * n], max_rows, {},
                                      self.buffer[3 * n:])

    def host_layout(self, row_slots: Sequence[int]) -> torch.Tensor:
        """[seg_start | seg_len | seg_slot | row_index] for rows on ``row_slots`` (-1: the base model)."""
        if len(row_slots) > self.max_rows:
            raise ValueError(f"{len(row_slots)} rows exceed the graphs' {self.max_rows}")
        counts = [0] * self.num_slots
        for slot in row_slots:
            if slot >= 0:
                counts[slot] += 1
        starts = [sum(counts[:s]) for s in range(self.num_slots)]
        base = [i for i, slot in enumerate(row_slots) if slot < 0]
        order = sorted((i for i, slot in enumerate(row_slots) if slot >= 0), key=lambda i: row_slots[i]) + base
        order += range(len(row_slots), self.max_rows)  # padding rows: base rows of the padded graph
        return torch.tensor(starts + counts + list(range(self.num_slots)) + order, dtype=torch.int32)

    def fill(self, row_slots: Sequence[int]) -> None:
        host = self.host_layout(row_slots)
        # NOTE: pinned where the platform has it, as the core's own transfers are (see build_segments)
        self.buffer.copy_(host.pin_memory() if self.pinned else host, non_blocking=self.pinned)
