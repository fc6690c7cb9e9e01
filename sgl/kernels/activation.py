"""Gated activations over [gate | up]: silu(gate) * up and gelu_tanh(gate) * up, fp32 math."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels._common import block_size, elementwise_warps, rows_2d
from sgl.kernels.pdl import launch_options, wait_for_previous

_MAX_BLOCK = 1024


@triton.jit
def gated_act(gate, up, GELU_TANH: tl.constexpr):
    """act(gate) * up in fp32, rounded as the reference's two torch ops round: the activation to the input dtype,
    then the product. Shared by the activation kernel and the GEMMs that apply it to their input tile."""
    g = gate.to(tl.float32)
    if GELU_TANH:
        inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        # tanh(z) = 2 * sigmoid(2z) - 1, which stays finite for large |z|
        act = 0.5 * g * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))
    else:
        act = g * tl.sigmoid(g)
    act = act.to(gate.dtype).to(tl.float32)
    return (act * up.to(tl.float32)).to(gate.dtype)


@triton.jit
def _gated_kernel(
    x_ptr,
    out_ptr,
    stride_x,
    stride_o,
    d,
    GELU_TANH: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_for_previous(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + d + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * stride_o + cols, gated_act(gate, up, GELU_TANH), mask=mask)


def _launch(x: torch.Tensor, gelu_tanh: bool) -> torch.Tensor:
    d = x.shape[-1] // 2
    x2 = rows_2d(x)
    out = torch.empty((x2.shape[0], d), dtype=x.dtype, device=x.device)
    if x2.shape[0] and d:
        block = min(block_size(d), _MAX_BLOCK)
        grid = (x2.shape[0], triton.cdiv(d, block))
        _gated_kernel[grid](
            x2, out, x2.stride(0), out.stride(0), d,
            GELU_TANH=gelu_tanh, BLOCK=block, num_warps=elementwise_warps(block), **launch_options(x2),
        )
    return out.view(*x.shape[:-1], d)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Same contract as the reference: x [..., 2 * d] as [gate | up] -> [..., d]."""
    return _launch(x, gelu_tanh=False)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _launch(x, gelu_tanh=True)
