"""Portable Triton kernels; each public op has the signature of its reference in ``sgl.core.ops.reference``.

Beside them, the portable pieces built on them that every Triton platform shares: the Triton attention backend
(attention_backend.py), the decode graph runner over the platform's graph hooks (graph_runner.py) and the
skinny-GEMM linear method (linear_method.py). The quantized GEMMs (fp8_gemm.py, int4_gemm.py) are imported by the
quantization plugin's Triton linear methods, not from here. Imported only by platforms whose capabilities include Triton (cuda,
rocm, xpu); importing this package imports triton.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sgl.kernels.activation import gelu_tanh_and_mul, silu_and_mul
from sgl.kernels.decode_attn import (
    DecodeWorkspace,
    decode_attention,
    decode_workspace,
    kv_splits_per_request,
    max_kv_splits_for,
)
from sgl.kernels.extend_attn import extend_attention
from sgl.kernels.fused_moe import fused_moe
from sgl.kernels.kv_store import store_kv
from sgl.kernels.norm import add_rms_norm, rms_norm
from sgl.kernels.qk_rope_store import qk_norm_rope_store_kv
from sgl.kernels.rotary import rotary_embedding

if TYPE_CHECKING:
    from sgl.core.ops.table import Ops


def portable_ops() -> Ops:
    """The op table every Triton platform starts from: these kernels where they exist, the references elsewhere."""
    from sgl.core.ops.table import reference_ops

    return reference_ops().replace(
        rms_norm=rms_norm, add_rms_norm=add_rms_norm, silu_and_mul=silu_and_mul, gelu_tanh_and_mul=gelu_tanh_and_mul,
        rotary_embedding=rotary_embedding, fused_moe=fused_moe, qk_norm_rope_store_kv=qk_norm_rope_store_kv,
    )


__all__ = [
    "DecodeWorkspace",
    "add_rms_norm",
    "decode_attention",
    "decode_workspace",
    "extend_attention",
    "fused_moe",
    "gelu_tanh_and_mul",
    "kv_splits_per_request",
    "max_kv_splits_for",
    "portable_ops",
    "qk_norm_rope_store_kv",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv",
]
