"""The W4A16 linear method for Triton platforms: AWQ/GPTQ tensors as loaded, through sgl.kernels.int4_gemm."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from sgl.kernels.int4_gemm import int4_gemm
from sgl.plugins.quant.int4_linear import Int4LinearMethod


class TritonInt4LinearMethod(Int4LinearMethod):
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        s = self.scheme
        x2 = x.reshape(-1, x.shape[-1])
        out = int4_gemm(
            x2, cast(torch.Tensor, layer.qweight), cast(torch.Tensor, layer.qzeros), cast(torch.Tensor, layer.scales),
            int(layer.int4_group), s.fmt == "awq", s.zero_offset,  # type: ignore[arg-type]
            cast(torch.Tensor, layer.g_idx) if s.desc_act else None, bias,
        )
        return out.reshape(*x.shape[:-1], out.shape[-1])
