"""Rotary position embeddings: one fp32 cos/sin table per model, built the way Hugging Face builds its frequencies.

Scaling variants only change the inverse frequencies (and, for some, a constant on cos/sin), so each is one small
function registered by its ``rope_type`` name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from sgl.core.model.context import ModelContext
    from sgl.core.ops.table import Ops


def _base_inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    # NOTE: exactly HF's expression (int64 arange cast to fp32) so the table matches theirs bit for bit.
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim))


InvFreqFn = Callable[[int, float, int, Mapping[str, Any]], torch.Tensor]


def _default(rotary_dim: int, base: float, max_position: int, scaling: Mapping[str, Any]) -> torch.Tensor:
    return _base_inv_freq(rotary_dim, base)


def _linear(rotary_dim: int, base: float, max_position: int, scaling: Mapping[str, Any]) -> torch.Tensor:
    # Position interpolation: dividing the frequencies by the factor equals dividing the positions.
    return _base_inv_freq(rotary_dim, base) / float(scaling["factor"])


def _dynamic(rotary_dim: int, base: float, max_position: int, scaling: Mapping[str, Any]) -> torch.Tensor:
    # NOTE: HF recomputes the NTK base for seq_len = max(current length, max_position_embeddings); the engine never
    # runs past max_position, so the table is the one HF uses at that length.
    factor = float(scaling["factor"])
    seq_len = max_position
    ntk_base = base * ((factor * seq_len / max_position) - (factor - 1)) ** (rotary_dim / (rotary_dim - 2))
    return _base_inv_freq(rotary_dim, ntk_base)


def _llama3(rotary_dim: int, base: float, max_position: int, scaling: Mapping[str, Any]) -> torch.Tensor:
    inv_freq = _base_inv_freq(rotary_dim, base)
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are interpolated by the factor, short ones kept, the band between blended smoothly.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_factor(scaling: Mapping[str, Any], max_position: int) -> float:
    factor = scaling.get("factor")
    return float(factor) if factor is not None else max_position / float(scaling["original_max_position_embeddings"])


def _yarn(rotary_dim: int, base: float, max_position: int, scaling: Mapping[str, Any]) -> torch.Tensor:
    # YaRN (DeepSeek-V2/V3, Qwen long context): high frequencies kept, low ones interpolated by the factor, a linear
    # ramp between the dims that make beta_fast and beta_slow rotations over the original context.
    factor = _yarn_factor(scaling, max_position)
    original = float(scaling["original_max_position_embeddings"])
    beta_fast, beta_slow = float(scaling.get("beta_fast") or 32), float(scaling.get("beta_slow") or 1)

    def dim_of(rotations: float) -> float:
        return (rotary_dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, rotary_dim, 2).to(torch.float32) / rotary_dim)
    extrapolation = 1 - ramp
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation


def _yarn_attention_factor(scaling: Mapping[str, Any], max_position: int) -> float:
    """The constant YaRN multiplies cos and sin by (HF's attention_factor)."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = _yarn_factor(scaling, max_position)
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return _yarn_mscale(factor, float(mscale)) / _yarn_mscale(factor, float(mscale_all_dim))
    return _yarn_mscale(factor)


ROPE_SCALINGS: dict[str, InvFreqFn] = {
    "default": _default,
    "linear": _linear,
    "dynamic": _dynamic,
    "llama3": _llama3,
    "yarn": _yarn,
}
# NOTE: the variants that also scale cos and sin by a constant; the others leave them as they are.
ROPE_ATTENTION_FACTORS: dict[str, Callable[[Mapping[str, Any], int], float]] = {"yarn": _yarn_attention_factor}


def rope_type(rope_scaling: Mapping[str, Any] | None) -> str:
    if not rope_scaling:
        return "default"
    return str(rope_scaling.get("rope_type", rope_scaling.get("type", "default")))


class RotaryEmbedding(nn.Module):
    """Holds ``cos_sin_cache`` [max_position, rotary_dim] fp32 (cos of each frequency, then sin) and applies it.

    NOTE: the cache is a non-persistent buffer that must stay fp32 whatever the model dtype; build the model in its
    dtype rather than casting it with ``.to(dtype)``.
    """

    def __init__(
        self,
        head_dim: int,
        rotary_dim: int,
        max_position: int,
        base: float,
        rope_scaling: Mapping[str, Any] | None,
        is_neox: bool,
        ops: Ops,
    ) -> None:
        super().__init__()
        kind = rope_type(rope_scaling)
        if kind not in ROPE_SCALINGS:
            raise ValueError(f"unsupported rope scaling type {kind!r}; supported: {', '.join(ROPE_SCALINGS)}")
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim {rotary_dim} must be even and at most head_dim {head_dim}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.max_position = max_position
        self.base = base
        self.is_neox = is_neox
        self.scaling_type = kind
        self.ops = ops
        inv_freq = ROPE_SCALINGS[kind](rotary_dim, base, max_position, rope_scaling or {})
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
        if kind in ROPE_ATTENTION_FACTORS:
            cache = cache * ROPE_ATTENTION_FACTORS[kind](rope_scaling or {}, max_position)
        self.register_buffer("cos_sin_cache", cache.to(torch.get_default_device()), persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, H*D], k [T, KVH*D] -> rotated (q, k) of the same shapes."""
        return self.ops.rotary_embedding(positions, q, k, self.head_dim, self.cos_sin_cache, self.is_neox)

    def extra_repr(self) -> str:
        return f"rotary_dim={self.rotary_dim}, max_position={self.max_position}, base={self.base}, {self.scaling_type}"


def get_rope(
    head_dim: int,
    rotary_dim: int,
    max_position: int,
    base: float,
    rope_scaling: Mapping[str, Any] | None,
    is_neox: bool = True,
    *,
    ctx: ModelContext,
) -> RotaryEmbedding:
    """One rope module; a model builds it once and shares it between its layers."""
    return RotaryEmbedding(head_dim, rotary_dim, max_position, base, rope_scaling, is_neox, ctx.ops)
