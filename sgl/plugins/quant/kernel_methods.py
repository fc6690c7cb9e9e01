"""The Triton kernel methods of the quantized layouts, where the platform runs Triton.

Each is imported only when asked for (the kernel modules import triton), and from here rather than from the reference
method's own module: a Triton method derives from its reference method, so the reference module naming it would be
a circle of imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sgl.plugins.quant import fp8_math as fm

if TYPE_CHECKING:
    from sgl.core.model.linear import LinearMethod
    from sgl.core.model.moe_method import MoEMethod
    from sgl.core.platform import Capabilities
    from sgl.plugins.quant.fp8_linear import Fp8Scheme
    from sgl.plugins.quant.int4_linear import Int4Scheme


def fast_fp8_linear_method(
    scheme: Fp8Scheme, capabilities: Capabilities, fp8_dtype: torch.dtype = fm.FP8
) -> LinearMethod | None:
    if not capabilities.triton:
        return None
    from sgl.plugins.quant.triton_fp8 import TritonFp8LinearMethod

    return TritonFp8LinearMethod(scheme, scaled_mm=capabilities.fp8, fp16_dot=not capabilities.fp8,
                                 fp8_dtype=fp8_dtype)


def fast_fp8_moe_method(
    scheme: Fp8Scheme, capabilities: Capabilities, fp8_dtype: torch.dtype = fm.FP8
) -> MoEMethod | None:
    if not capabilities.triton:
        return None
    from sgl.plugins.quant.triton_fp8_moe import TritonFp8MoEMethod

    return TritonFp8MoEMethod(scheme, fp8_dtype, fp16_dot=not capabilities.fp8)


def fast_int4_linear_method(scheme: Int4Scheme, capabilities: Capabilities) -> LinearMethod | None:
    if not capabilities.triton:
        return None
    from sgl.plugins.quant.triton_int4 import TritonInt4LinearMethod

    return TritonInt4LinearMethod(scheme)


def fast_int4_moe_method(scheme: Int4Scheme, capabilities: Capabilities) -> MoEMethod | None:
    if not capabilities.triton:
        return None
    from sgl.plugins.quant.triton_int4_moe import TritonInt4MoEMethod

    return TritonInt4MoEMethod(scheme)
