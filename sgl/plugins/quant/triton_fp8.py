"""The FP8 linear method for Triton platforms: activations quantized exactly as the reference does, then a scaled
FP8 GEMM (sgl.kernels.fp8_gemm; torch._scaled_mm for per-channel weights with per-token inputs beyond decode sizes,
where the device has fp8 tensor cores)."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from sgl.kernels.fp8_gemm import fp8_gemm
from sgl.kernels.skinny_gemm import MAX_ROWS
from sgl.plugins.quant import fp8_math as fm
from sgl.plugins.quant.fp8_linear import Fp8LinearMethod, Fp8Scheme

_SCALED_MM_DTYPES = (torch.bfloat16, torch.float16)


class TritonFp8LinearMethod(Fp8LinearMethod):
    """NOTE: ``scaled_mm`` needs fp8 tensor cores (compute capability 8.9+); without them ``fp16_dot`` widens both
    operands to fp16 (exact for e4m3) inside the Triton kernel."""

    def __init__(self, scheme: Fp8Scheme, scaled_mm: bool, fp16_dot: bool, fp8_dtype: torch.dtype = fm.FP8) -> None:
        super().__init__(scheme, fp8_dtype)
        self.scaled_mm = scaled_mm
        self.fp16_dot = fp16_dot

    def _quantized_input(self, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(a, a_scale, a_group_k): ``x`` itself for weight-only, else its e4m3 values and their scales."""
        k = x.shape[1]
        act = self.scheme.activation if self.scheme.serialized else "token"
        if act == "none":
            return x, None, 0
        if act == "static":
            scale = cast(torch.Tensor, layer.input_scale).float()
            return fm.quantize_with_scale(x, scale, self.fp8_dtype), scale.reshape(1, 1).expand(x.shape[0], 1), k
        group = k if act == "token" else cast(tuple[int, int], self.scheme.block)[1]
        q, scale = fm.quantize_per_token_group(x, group, self.fp8_dtype)
        return q, scale, min(group, k)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        k = x2.shape[1]
        weight = cast(torch.Tensor, layer.weight)
        if self.scheme.weight == "block" and self.scheme.serialized:
            w_scale = cast(torch.Tensor, getattr(layer, self.scheme.scale_name))
            w_group = cast(tuple[int, int], self.scheme.block)
        else:
            w_scale, w_group = cast(torch.Tensor, layer.weight_scale), (1, k)
        a, a_scale, a_group = self._quantized_input(layer, x2)
        if (self.scaled_mm and a_scale is not None and w_group == (1, k) and a_group == k
                and x2.shape[0] > MAX_ROWS and x.dtype in _SCALED_MM_DTYPES):
            out = torch._scaled_mm(a, weight.t(), scale_a=a_scale.float().contiguous(),
                                   scale_b=w_scale.float().reshape(1, -1).contiguous(), out_dtype=x.dtype)
            if bias is not None:
                out = out + bias
        else:
            out = fp8_gemm(a, weight, w_scale, w_group, a_scale, a_group, bias, out_dtype=x.dtype,
                           fp16_dot=self.fp16_dot)
        return out.reshape(*x.shape[:-1], out.shape[-1])
