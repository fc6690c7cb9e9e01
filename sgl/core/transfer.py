"""Host-to-device copies that never stall the host behind queued device work.

A copy from pageable memory waits until the device has run everything queued before it, which silently
serialises the scheduler with the forward it just launched; from pinned memory it is truly asynchronous.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(t: torch.Tensor, device: torch.device, pinned: bool) -> torch.Tensor:
    """``t`` (on the host) on ``device``; asynchronous when ``pinned`` (the platform has pinned memory)."""
    if device.type == "cpu":
        return t
    if pinned:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def rows_to_device(
    rows: Sequence[Sequence[int]] | Sequence[Sequence[float]], dtype: torch.dtype, device: torch.device, pinned: bool
) -> torch.Tensor:
    """Several equal-length host lists in one transfer: a [len(rows), n] tensor on the device."""
    return to_device(torch.tensor(rows, dtype=dtype), device, pinned)
