"""Unpacking AWQ's and GPTQ's int32-packed 4-bit tensors (eight values a word, lowest nibble first) in plain torch."""

from __future__ import annotations

import torch

PACK = 8  # 4-bit values per int32
# NOTE: AutoAWQ's GEMM layout stores output columns (0, 2, 4, 6, 1, 3, 5, 7) of each group of eight in nibbles
# 0..7; reading nibble AWQ_UNPACK_ORDER[c] gives column c.
AWQ_UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def unpack_cols(packed: torch.Tensor, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """``[..., rows, cols/8]`` int32 -> ``[..., rows, cols]`` int values 0..15 (``order``: AWQ's interleave, else
    sequential); leading dims (experts) pass through."""
    nibbles = (packed.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 0xF
    if order is not None:
        nibbles = nibbles[..., list(order)]
    return nibbles.reshape(*packed.shape[:-1], -1)


def unpack_rows(packed: torch.Tensor) -> torch.Tensor:
    """``[..., rows/8, cols]`` int32 -> ``[..., rows, cols]`` (GPTQ's qweight: eight consecutive input rows a word)."""
    nibbles = (packed.unsqueeze(-2) >> _SHIFTS.to(packed.device).view(PACK, 1)) & 0xF
    return nibbles.reshape(*packed.shape[:-2], -1, packed.shape[-1])
