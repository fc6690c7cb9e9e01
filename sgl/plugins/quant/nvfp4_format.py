"""NVFP4's value format, shared by the linear and MoE methods: e2m1 values two a byte, an e4m3 scale per 16."""

from __future__ import annotations

import torch
from torch import nn

GROUP = 16
# e2m1: sign bit 3, then the magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """[..., rows, cols/2] uint8 -> [..., rows, cols] float32 e2m1 values (low nibble first)."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=packed.device)
    p = packed.to(torch.int32)
    return torch.stack([table[p & 0xF], table[(p >> 4) & 0xF]], dim=-1).reshape(*packed.shape[:-1], -1)


def dummy_fill(value: float, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    @torch.no_grad()
    def fill(param: nn.Parameter, gen: torch.Generator) -> None:
        param.data.copy_(torch.full(param.shape, value, device=param.device).to(dtype))

    return fill
