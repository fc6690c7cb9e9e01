"""Torch-native reference ops: the CPU path, the fallback for a new vendor, and the oracle for fast kernels.

Numerics follow Hugging Face: norms compute in fp32 and cast back before the weight multiply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgl.core.memory.kv_pool import to_kv_dtype


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual): the residual stream and its normed view."""
    summed = x + residual
    return rms_norm(summed, weight, eps), summed


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x is [..., 2 * d] laid out as [gate | up]; returns silu(gate) * up."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.gelu(x[..., :d], approximate="tanh") * x[..., d:]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    if is_neox:
        x1, x2 = x.chunk(2, dim=-1)
    else:
        x1, x2 = x[..., ::2], x[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if is_neox:
        return torch.cat((o1, o2), dim=-1)
    return torch.stack((o1, o2), dim=-1).flatten(-2)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    head_dim: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates the first ``rotary_dim`` features of every head of q [T, H*D] and k [T, KVH*D].

    ``cos_sin_cache`` is [max_positions, rotary_dim] fp32: cos of the frequencies in the first half, sin in the second.
    """
    rotary_dim = cos_sin_cache.shape[-1]
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)  # [T, rotary_dim / 2]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

    def apply(x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.view(shape[0], -1, head_dim)
        rot = _rotate(x[..., :rotary_dim].float(), cos, sin, is_neox).to(x.dtype)
        return torch.cat((rot, x[..., rotary_dim:]), dim=-1).reshape(shape)

    return apply(q), apply(k)


def qk_norm_rope_store_kv(
    positions: torch.Tensor,
    qkv: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    eps: float,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    loc: torch.Tensor,
) -> torch.Tensor:
    """The attention prologue as one op: qkv [T, (H + 2 KVH) * D] -> q [T, H * D] (contiguous), K and V stored.

    Per head, q and k are RMS-normed over head_dim when their weights are given (Qwen3; both or neither), then
    rotated; k and v are written at slots ``loc`` of the layer's buffers [slots, KVH, D] as ``KVPool.set_kv_buffer``
    writes them. Composed from the reference ops above, so the unfused model graph and this op agree bit for bit.
    """
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    if (q_norm_weight is None) != (k_norm_weight is None):
        raise ValueError("q and k head norms come together: give both weights or neither")
    if q_norm_weight is not None and k_norm_weight is not None:
        q = rms_norm(q.reshape(-1, head_dim), q_norm_weight, eps).view(q.shape)
        k = rms_norm(k.reshape(-1, head_dim), k_norm_weight, eps).view(k.shape)
    q, k = rotary_embedding(positions, q, k, head_dim, cos_sin_cache, is_neox)
    k_buffer[loc] = to_kv_dtype(k.reshape(-1, num_kv_heads, head_dim), k_buffer.dtype)
    v_buffer[loc] = to_kv_dtype(v.reshape(-1, num_kv_heads, v_buffer.shape[-1]), v_buffer.dtype)
    return q.contiguous()
