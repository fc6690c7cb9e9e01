"""RMSNorm through the platform's ops table, with the fused residual add SGLang-style layers expect."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from sgl.core.model.context import ModelContext


class RMSNorm(nn.Module):
    """``forward(x)`` returns the normed x; ``forward(x, residual)`` returns (norm(x + residual), x + residual)."""

    def __init__(self, hidden_size: int, eps: float, ctx: ModelContext) -> None:
        super().__init__()
        self.ops = ctx.ops
        self.eps = eps
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=ctx.dtype), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.add_rms_norm(x, residual, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"
