"""A GEMM hook for Triton platforms: dense weights, with a weight-streaming kernel for a handful of rows."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from sgl.core.model.linear import UnquantizedLinearMethod
from sgl.kernels.skinny_gemm import MAX_ROWS, skinny_gemm

_STREAMED_DTYPES = (torch.bfloat16, torch.float16)


class SkinnyLinearMethod(UnquantizedLinearMethod):
    """The vendor GEMM, except at <= 16 rows (decode at small batch), where the product only streams the weight.

    NOTE: there cuBLAS (H200) reaches 72-85% of the memory bandwidth on the attention projections (o_proj 3.1 TB/s)
    and sgl.kernels.skinny_gemm 85-95% (benchmarks/skinny_gemm_sweep.py); at batch 1 the weights are the whole step.
    The choice depends on the row count only, so a padded graph batch and an eager one agree row for row.
    """

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        w = cast(torch.Tensor, layer.weight)
        if x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS and x.dtype == w.dtype and x.dtype in _STREAMED_DTYPES:
            return skinny_gemm(x, w, bias)
        return F.linear(x, w, bias)
