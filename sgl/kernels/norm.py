"""RMSNorm and fused residual-add RMSNorm: one program per row, the row held in registers, fp32 statistics."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels._common import block_size, elementwise_warps, rows_2d
from sgl.kernels.pdl import launch_options, wait_for_previous


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    sum_ptr,
    stride_x,
    stride_r,
    stride_o,
    stride_s,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_for_previous(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        # NOTE: the sum is rounded to the input dtype before it is normed, as the reference's `x + residual` is.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(sum_ptr + row * stride_s + cols, x, mask=mask)
    h = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h * h, axis=0) / n_cols + eps)
    # NOTE: normed value is cast back to the input dtype before the weight multiply (Hugging Face numerics).
    normed = (h * rstd).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    shape = x.shape
    n = shape[-1]
    x2 = rows_2d(x)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty((x2.shape[0], n), dtype=out_dtype, device=x.device)
    if residual is not None:
        r2 = rows_2d(residual.to(x.dtype))
        summed = torch.empty((x2.shape[0], n), dtype=x.dtype, device=x.device)
    else:
        r2, summed = x2, out
    if x2.shape[0]:
        block = block_size(n)
        _rms_norm_kernel[(x2.shape[0],)](
            x2, r2, weight, out, summed,
            x2.stride(0), r2.stride(0), out.stride(0), summed.stride(0),
            n, float(eps),
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=elementwise_warps(block),
            **launch_options(x2),
        )
    return out.view(shape), summed.view(shape) if residual is not None else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Same contract as ``sgl.core.ops.reference.rms_norm``: x [..., N], weight [N]."""
    return _launch(x, None, weight, eps)[0]


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual) in one pass over memory."""
    normed, summed = _launch(x, residual, weight, eps)
    assert summed is not None
    return normed, summed
