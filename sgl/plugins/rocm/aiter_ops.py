"""AMD aiter's RMSNorm kernels behind the Ops table's signatures. Used only where aiter is usable.

NOTE: aiter is imported on first call, not at import: importing this module never raises on a machine without it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch


def _aiter() -> ModuleType:
    return importlib.import_module("aiter")  # a dict lookup once imported


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    shape = x.shape
    return _aiter().rms_norm(x.reshape(-1, shape[-1]), weight, eps).view(shape)  # type: ignore[no-any-return]


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual), as the reference: aiter writes both in one kernel."""
    shape = x.shape
    x2, r2 = x.reshape(-1, shape[-1]), residual.reshape(-1, shape[-1])
    out, summed = torch.empty_like(x2), torch.empty_like(x2)
    _aiter().rmsnorm2d_fwd_with_add(out, x2, r2, summed, weight, eps)
    return out.view(shape), summed.view(shape)
