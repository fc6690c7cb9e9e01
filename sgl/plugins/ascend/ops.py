"""RMSNorm and rotary through torch_npu's fused ops, behind the Ops table's signatures.

Each op is taken only where this torch_npu has it (``npu_rms_norm``, ``npu_add_rms_norm``, ``npu_rotary_mul``); the
torch reference stays otherwise. Rotary goes through torch_npu only for the rotate-half (neox) layout over the whole
head, the case ``npu_rotary_mul`` computes; partial or interleaved rotary stays the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sgl.core.ops import reference
from sgl.core.ops.table import Ops, reference_ops
from sgl.plugins.ascend.runtime import torch_npu_op


def _rms_norm(op: Callable[..., Any]) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return op(x, weight, epsilon=eps)[0]  # (y, rstd)

    return rms_norm


def _add_rms_norm(op: Callable[..., Any]) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def add_rms_norm(
        x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y, _rstd, summed = op(x, residual, weight, eps)  # (y, rstd, x + residual)
        return y, summed

    return add_rms_norm


def _rotary(op: Callable[..., Any]) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def rotary_embedding(
        positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, head_dim: int, cos_sin_cache: torch.Tensor,
        is_neox: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not is_neox or cos_sin_cache.shape[-1] != head_dim:
            return reference.rotary_embedding(positions, q, k, head_dim, cos_sin_cache, is_neox)
        cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)  # [T, D / 2] each
        # NOTE: npu_rotary_mul computes x * r1 + rotate_half(x) * r2 over [1, T, heads, D], r broadcast over heads.
        r1 = torch.cat((cos, cos), dim=-1)[None, :, None, :].to(q.dtype)
        r2 = torch.cat((sin, sin), dim=-1)[None, :, None, :].to(q.dtype)

        def apply(x: torch.Tensor) -> torch.Tensor:
            return op(x.reshape(1, x.shape[0], -1, head_dim), r1, r2).reshape(x.shape)

        return apply(q), apply(k)

    return rotary_embedding


def ascend_ops() -> Ops:
    overrides: dict[str, Callable[..., object]] = {}
    if (op := torch_npu_op("npu_rms_norm")) is not None:
        overrides["rms_norm"] = _rms_norm(op)  # type: ignore[arg-type]
    if (op := torch_npu_op("npu_add_rms_norm")) is not None:
        overrides["add_rms_norm"] = _add_rms_norm(op)  # type: ignore[arg-type]
    if (op := torch_npu_op("npu_rotary_mul")) is not None:
        overrides["rotary_embedding"] = _rotary(op)  # type: ignore[arg-type]
    return reference_ops().replace(**overrides)
