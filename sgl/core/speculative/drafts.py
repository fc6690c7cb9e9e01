"""Drafts that stay on the device: a draft model's chain goes straight into the verify forward, and its tokens come
home together with the target's, in the one transfer a verify step needs anyway.

Why: a draft head's tokens are made on the device. Reading each draft step's tokens on the host (``.tolist()``) waits
for the device to finish that step, so the host cannot queue the next one ahead: on a GPU every such read leaves the
device idle while the host prepares the next launch. The host needs the drafts only to accept them (after the verify
forward) and, where a request's sampling penalises repeated tokens, to sample each verified position given the drafts
before it; everything else (the verify forward's input ids, the draft chain itself) reads them on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from sgl.core.transfer import to_device


class DeviceDrafts(NamedTuple):
    """Per request of a decode batch, ``counts[i]`` draft tokens; all of them in ``tokens`` (int64, on the device),
    request-major: request i's drafts at ``sum(counts[:i]) ..``."""

    tokens: torch.Tensor
    counts: list[int]

    def split(self, flat: Sequence[int]) -> list[list[int]]:
        """``flat`` (``tokens`` read on the host) as one list per request."""
        out: list[list[int]] = []
        start = 0
        for k in self.counts:
            out.append([int(t) for t in flat[start : start + k]])
            start += k
        return out


def chain_drafts(
    columns: Sequence[tuple[Sequence[int], torch.Tensor]], counts: Sequence[int], pinned: bool
) -> torch.Tensor:
    """A chain drafted step by step, request-major: ``columns[j]`` is step j's (members, tokens), where ``members``
    lists (ascending) the indices, among the requests with drafts, of the ``tokens`` rows; a request with ``counts[m]``
    drafts is a member of steps ``0 .. counts[m] - 1``. Needs no host read of the tokens.

    NOTE: requests are members of a prefix of the steps (a request's chain stops, it never skips a step), so where
    every count is the same the result is the columns stacked side by side."""
    drafting = [k for k in counts if k]
    if not columns:
        return torch.empty(0, dtype=torch.int64)
    if all(len(members) == len(drafting) for members, _ in columns):
        return torch.stack([t.to(torch.int64) for _, t in columns], dim=1).reshape(-1)
    start, where = 0, []  # where[j][m]: row of request m in the columns' concatenation
    for members, _ in columns:
        where.append({m: start + r for r, m in enumerate(members)})
        start += len(members)
    order = [where[j][m] for m, k in enumerate(drafting) for j in range(k)]
    flat = torch.cat([t.to(torch.int64) for _, t in columns])
    index = to_device(torch.tensor(order, dtype=torch.int64), flat.device, pinned)
    return flat.index_select(0, index)


def draft_rows(counts: Sequence[int]) -> list[int]:
    """Rows of a chain verify batch (request i: its last token, then its drafts) that hold a draft, request-major."""
    rows: list[int] = []
    offset = 0
    for k in counts:
        rows.extend(range(offset + 1, offset + 1 + k))
        offset += 1 + k
    return rows
