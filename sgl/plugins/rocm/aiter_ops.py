"""AMD aiter's RMSNorm kernels behind the Ops table's signatures. Imported only where aiter is usable."""

from __future__ import annotations

import aiter
import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    shape = x.shape
    return aiter.rms_norm(x.reshape(-1, shape[-1]), weight, eps).view(shape)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual), as the reference: aiter writes both in one kernel."""
    shape = x.shape
    x2, r2 = x.reshape(-1, shape[-1]), residual.reshape(-1, shape[-1])
    out, summed = torch.empty_like(x2), torch.empty_like(x2)
    aiter.rmsnorm2d_fwd_with_add(out, x2, r2, summed, weight, eps)
    return out.view(shape), summed.view(shape)
