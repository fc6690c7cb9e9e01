"""The W4A16 linear method for Triton platforms: AWQ/GPTQ tensors as loaded. Decode sizes (<= 16 rows) with groups
in input order take sgl.kernels.int4_skinny_gemm (streams the packed words once, no per-weight float work); larger
batches and act-order (``g_idx``) weights take sgl.kernels.int4_gemm."""

from __future__ import annotations

import functools
import logging
from typing import cast

import torch
from torch import nn

from sgl.kernels.int4_gemm import int4_gemm
from sgl.kernels.int4_skinny_gemm import int4_skinny_gemm, max_block_k
from sgl.kernels.skinny_gemm import MAX_ROWS
from sgl.plugins.quant.int4_linear import Int4LinearMethod

logger = logging.getLogger(__name__)


@functools.cache
def _log_unstreamed(why: str) -> None:
    logger.info("int4 decode: %s; small batches run the general int4 GEMM", why)


class TritonInt4LinearMethod(Int4LinearMethod):
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        s = self.scheme
        x2 = x.reshape(-1, x.shape[-1])
        qweight, qzeros = cast(torch.Tensor, layer.qweight), cast(torch.Tensor, layer.qzeros)
        scales, group = cast(torch.Tensor, layer.scales), int(layer.int4_group)  # type: ignore[arg-type]
        streams = not s.desc_act and max_block_k(group, x2.shape[1]) is not None
        if 0 < x2.shape[0] <= MAX_ROWS and streams:
            out = int4_skinny_gemm(x2, qweight, qzeros, scales, group, s.fmt == "awq", s.zero_offset, bias)
        else:
            if x2.shape[0] <= MAX_ROWS:
                _log_unstreamed("act-order weights (g_idx)" if s.desc_act else f"group size {group}")
            out = int4_gemm(x2, qweight, qzeros, scales, group, s.fmt == "awq", s.zero_offset,
                            cast(torch.Tensor, layer.g_idx) if s.desc_act else None, bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])
