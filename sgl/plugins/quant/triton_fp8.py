"""The FP8 linear method for Triton platforms: activations quantized exactly as the reference does, then a scaled
FP8 GEMM. Decode sizes (<= 16 rows) take sgl.kernels.fp8_skinny_gemm, which streams the weight and rounds the
activations in the same launch; larger batches quantize in one launch (sgl.kernels.fp8_quant) and run
torch._scaled_mm for per-channel weights with per-token inputs where the device has fp8 tensor cores and the call
works, else sgl.kernels.fp8_gemm."""

from __future__ import annotations

import functools
import logging
from typing import cast

import torch
from torch import nn

from sgl.kernels.fp8_gemm import fp8_gemm
from sgl.kernels.fp8_quant import fp8_quantize_per_token_group
from sgl.kernels.fp8_skinny_gemm import ActQuant, DotKind, fp8_skinny_gemm, max_block_k
from sgl.kernels.skinny_gemm import MAX_ROWS
from sgl.plugins.quant import fp8_math as fm
from sgl.plugins.quant.fp8_linear import Fp8LinearMethod, Fp8Scheme

_SCALED_MM_DTYPES = (torch.bfloat16, torch.float16)
logger = logging.getLogger(__name__)
_ACT_QUANT = {"none": ActQuant.NONE, "token": ActQuant.TOKEN, "group": ActQuant.GROUP, "static": ActQuant.STATIC}


@functools.cache
def _log_unstreamed(w_group_k: int, act_group: int) -> None:
    logger.info("fp8 decode: scale groups along K (weight %d, activations %d) are not powers of two >= 16; small "
                "batches run the general fp8 GEMM", w_group_k, act_group)


@functools.cache
def scaled_mm_rowwise_works(device: torch.device, fp8_dtype: torch.dtype) -> bool:
    """Whether torch._scaled_mm runs an fp8 GEMM with per-row [M, 1] and per-column [1, N] fp32 scales on ``device``
    (it depends on the torch build and the GPU as well as the capability). Asked once, at load: never during graph
    capture."""
    try:
        a = torch.zeros(32, 32, device=device).to(fp8_dtype)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(32, 1, device=device), scale_b=torch.ones(1, 32, device=device),
                         out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError, TypeError) as e:
        logger.info("fp8: torch._scaled_mm with row-wise scales is not available on %s (%s); prefill runs the Triton "
                    "fp8 GEMM", device, e)
        return False
    return True


class TritonFp8LinearMethod(Fp8LinearMethod):
    """NOTE: ``scaled_mm`` needs fp8 tensor cores (compute capability 8.9+); without them ``fp16_dot`` widens both
    operands to fp16 (exact for e4m3) inside the Triton kernel. A platform that grants ``scaled_mm`` still has it
    withdrawn at load where the call itself fails (scaled_mm_rowwise_works)."""

    def __init__(self, scheme: Fp8Scheme, scaled_mm: bool, fp16_dot: bool, fp8_dtype: torch.dtype = fm.FP8) -> None:
        super().__init__(scheme, fp8_dtype)
        self.scaled_mm = scaled_mm
        self.fp16_dot = fp16_dot

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        super().process_weights_after_loading(layer)
        if self.scaled_mm and not scaled_mm_rowwise_works(cast(torch.Tensor, layer.weight).device, self.fp8_dtype):
            self.scaled_mm = False

    def _takes_scaled_mm(self, x2: torch.Tensor, a_scale: torch.Tensor | None, a_group: int,
                         w_group: tuple[int, int]) -> bool:
        """torch._scaled_mm for per-channel weights with per-token (or static) inputs beyond decode sizes; block
        scales and weight-only stay on sgl.kernels.fp8_gemm."""
        k = x2.shape[1]
        return (self.scaled_mm and a_scale is not None and w_group == (1, k) and a_group == k
                and x2.shape[0] > MAX_ROWS and x2.dtype in _SCALED_MM_DTYPES)

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
        q, scale = fp8_quantize_per_token_group(x, group, self.fp8_dtype)
        return q, scale, min(group, k)

    def _streamed(self, layer: nn.Module, x2: torch.Tensor, w_scale: torch.Tensor, w_group: tuple[int, int],
                  bias: torch.Tensor | None) -> torch.Tensor | None:
        """A decode-sized product in one launch that rounds x as _quantized_input would and streams the weight; None
        where the scale groups fit no K step of that kernel (then the general path runs)."""
        act = self.scheme.activation if self.scheme.serialized else "token"
        group = cast(tuple[int, int], self.scheme.block)[1] if act == "group" else 0
        if max_block_k(x2.shape[1], w_group[1], _ACT_QUANT[act], group) is None:
            _log_unstreamed(w_group[1], group)
            return None
        x_scale = cast(torch.Tensor, layer.input_scale) if act == "static" else None
        dot = None if x2.device.type == "cpu" else DotKind.FP16 if self.fp16_dot else DotKind.FP8
        return fp8_skinny_gemm(x2, cast(torch.Tensor, layer.weight), w_scale, w_group, _ACT_QUANT[act], group,
                               x_scale, bias, dot)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        k = x2.shape[1]
        weight = cast(torch.Tensor, layer.weight)
        if self.scheme.weight == "block" and self.scheme.serialized:
            w_scale = cast(torch.Tensor, getattr(layer, self.scheme.scale_name))
            w_group = cast(tuple[int, int], self.scheme.block)
        else:
            w_scale, w_group = cast(torch.Tensor, layer.weight_scale), (1, k)
        streamed = self._streamed(layer, x2, w_scale, w_group, bias) if 0 < x2.shape[0] <= MAX_ROWS else None
        if streamed is not None:
            return streamed.reshape(*x.shape[:-1], streamed.shape[-1])
        a, a_scale, a_group = self._quantized_input(layer, x2)
        if self._takes_scaled_mm(x2, a_scale, a_group, w_group):
            assert a_scale is not None
            out = torch._scaled_mm(a, weight.t(), scale_a=a_scale.float().contiguous(),
                                   scale_b=w_scale.float().reshape(1, -1).contiguous(), out_dtype=x.dtype)
            if bias is not None:
                out = out + bias
        else:
            out = fp8_gemm(a, weight, w_scale, w_group, a_scale, a_group, bias, out_dtype=x.dtype,
                           fp16_dot=self.fp16_dot)
        return out.reshape(*x.shape[:-1], out.shape[-1])
