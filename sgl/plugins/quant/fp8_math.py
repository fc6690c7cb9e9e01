"""FP8 (e4m3) arithmetic in plain torch: the quantizers and dequantizers every FP8 layout shares.

NOTE: every scale here is a dequantization multiplier (``real = fp8 * scale``), as in the checkpoints: HF's
``weight_scale_inv`` and compressed-tensors' ``weight_scale`` both multiply.

Checkpoints are OCP ``float8_e4m3fn`` (max 448). AMD MI300 computes in ``float8_e4m3fnuz`` (exponent bias 8, max 240,
no negative zero): the same byte means half the value there, so ``to_e4m3fnuz`` keeps the bytes and doubles the
scales; the quantizers take the target ``dtype`` and saturate at its own maximum.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
FNUZ = torch.float8_e4m3fnuz
_TINY = 1e-12


def _amax_scale(amax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``amax`` times fp32(1 / max), clamped away from zero.

    NOTE: written as a multiply on purpose: torch on CUDA evaluates ``tensor / python_scalar`` as ``tensor * fp32(1 /
    scalar)`` while on the CPU it divides, and for 448 the two differ by an ulp for some amax (so some values then
    round to a neighbouring e4m3). The multiply is the same arithmetic on every device, and the fused kernels
    (sgl.kernels.fp8_skinny_gemm) compute it the same way.
    """
    return (amax * (1.0 / fp8_max(dtype))).clamp(min=_TINY)


def fp8_max(dtype: torch.dtype = FP8) -> float:
    return float(torch.finfo(dtype).max)


def quantize_with_scale(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = FP8) -> torch.Tensor:
    """``x / scale`` saturated into ``dtype`` (``scale`` broadcasts against ``x``)."""
    top = fp8_max(dtype)
    return (x.float() / scale).clamp(-top, top).to(dtype)


def per_row_scale(x: torch.Tensor, dtype: torch.dtype = FP8) -> torch.Tensor:
    """``[rows, 1]`` scales mapping each row's absolute maximum to ``dtype``'s (per-channel weights, per-token
    inputs)."""
    return _amax_scale(x.float().abs().amax(dim=-1, keepdim=True), dtype)


def quantize_per_row(x: torch.Tensor, dtype: torch.dtype = FP8) -> tuple[torch.Tensor, torch.Tensor]:
    scale = per_row_scale(x, dtype)
    return quantize_with_scale(x, scale, dtype), scale


def to_e4m3fnuz(weight: torch.Tensor) -> torch.Tensor:
    """OCP e4m3 bytes as e4m3fnuz, where each byte means half the value (the caller doubles the scales). The one byte
    that differs in kind, 0x80 (-0 in OCP, NaN in fnuz), becomes +0."""
    bits = weight.view(torch.int8).clone()
    bits[bits == -128] = 0
    return bits.view(FNUZ)


def expand_blocks(scale: torch.Tensor, rows: int, cols: int, block: tuple[int, int]) -> torch.Tensor:
    """A ``[ceil(rows/b0), ceil(cols/b1)]`` block scale spread over ``[rows, cols]`` (the last blocks may be partial)."""
    return scale.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]


def quantize_blocks(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise quantization (as DeepSeek/Qwen3 FP8 releases were made): one scale per ``block`` tile."""
    rows, cols = w.shape
    b0, b1 = block
    pad = torch.zeros(-(-rows // b0) * b0, -(-cols // b1) * b1, dtype=torch.float32, device=w.device)
    pad[:rows, :cols] = w.float()
    tiles = pad.view(pad.shape[0] // b0, b0, pad.shape[1] // b1, b1)
    scale = (tiles.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=_TINY)
    return quantize_with_scale(w, expand_blocks(scale, rows, cols, block)), scale


def quantize_per_token_group(
    x: torch.Tensor, group: int, dtype: torch.dtype = FP8
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [rows, cols] in e4m3 with one dynamic scale per token and ``group`` consecutive features (DeepSeek's
    activation scheme for block-wise weights; ``group`` >= cols gives per-token): (values, scales [rows, groups])."""
    rows, cols = x.shape
    group = min(group, cols)
    pad = -(-cols // group) * group
    xp = torch.nn.functional.pad(x.float(), (0, pad - cols)).view(rows, pad // group, group)
    scale = _amax_scale(xp.abs().amax(dim=-1, keepdim=True), dtype)
    return quantize_with_scale(xp, scale, dtype).view(rows, pad)[:, :cols], scale.view(rows, pad // group)


def fake_quantize_per_token_group(x: torch.Tensor, group: int, dtype: torch.dtype = FP8) -> torch.Tensor:
    """``x`` rounded through e4m3 as ``quantize_per_token_group`` does it (the reference's view of the input)."""
    q, scale = quantize_per_token_group(x, group, dtype)
    group = min(group, x.shape[1])
    return q.float() * scale.repeat_interleave(group, 1)[:, : x.shape[1]]


def fake_quantize_static(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = FP8) -> torch.Tensor:
    """``x`` rounded through e4m3 with one fixed scale (a checkpoint's static ``input_scale``)."""
    return quantize_with_scale(x, scale, dtype).float() * scale
