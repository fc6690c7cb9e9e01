"""Host-to-device copies that never stall the host behind queued device work.

A copy from pageable memory waits until the device has run everything queued before it, which silently
serialises the scheduler with the forward it just launched; from pinned memory it is truly asynchronous.
"""

from __future__ import annotations

import array
from collections.abc import Sequence

import torch


def to_device(t: torch.Tensor, device: torch.device, pinned: bool) -> torch.Tensor:
    """``t`` (on the host) on ``device``; asynchronous when ``pinned`` (the platform has pinned memory)."""
    if device.type == "cpu":
        return t
    if pinned:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


_TYPECODES = {torch.int64: "q", torch.int32: "i", torch.float32: "f", torch.float64: "d"}


def host_rows(rows: Sequence[Sequence[int]] | Sequence[Sequence[float]], dtype: torch.dtype) -> torch.Tensor:
    """``torch.tensor(rows, dtype=dtype)`` for equal-length rows of Python numbers, built through an ``array``.

    NOTE: torch.tensor reads a nested list element by element (~50 ns each); ``array.extend`` converts a list in C,
    which is 2-3x cheaper for the [5, batch] rows a decode step packs. Anything ``array`` refuses (a float among
    ints, ragged rows, an unknown dtype) takes torch.tensor, which gives its usual result or error."""
    code = _TYPECODES.get(dtype)
    n = len(rows[0]) if len(rows) else 0
    if code is None or n == 0:
        return torch.tensor(rows, dtype=dtype)
    buf = array.array(code)
    try:
        for row in rows:
            if len(row) != n:
                raise ValueError("ragged rows")
            buf.extend(row)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return torch.tensor(rows, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).view(len(rows), n)


def rows_to_device(
    rows: Sequence[Sequence[int]] | Sequence[Sequence[float]], dtype: torch.dtype, device: torch.device, pinned: bool
) -> torch.Tensor:
    """Several equal-length host lists in one transfer: a [len(rows), n] tensor on the device."""
    return to_device(host_rows(rows, dtype), device, pinned)


def lists_to_device(
    lists: Sequence[Sequence[int]], dtype: torch.dtype, device: torch.device, pinned: bool
) -> list[torch.Tensor]:
    """Several host lists of any lengths in one transfer: one 1-D device tensor per list (views of one buffer).

    NOTE: each pinned transfer costs a pinned staging buffer and a copy launch; a speculative step's draft and
    verify inputs (ids, positions, slots, lengths of several small batches) travel together this way."""
    sizes = [len(x) for x in lists]
    code = _TYPECODES.get(dtype)
    if code is None:
        flat = torch.tensor([v for x in lists for v in x], dtype=dtype)
    else:
        buf = array.array(code)
        for x in lists:
            buf.extend(x)  # type: ignore[arg-type]
        flat = torch.frombuffer(buf, dtype=dtype) if len(buf) else torch.empty(0, dtype=dtype)
    return list(to_device(flat, device, pinned).split(sizes))
