"""The Ops table: the hook through which a platform swaps in faster versions of individual ops."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sgl.core.ops import moe, reference


@dataclass(frozen=True)
class Ops:
    """Callables the model graph uses. A platform overrides a subset with ``reference_ops().replace(...)``."""

    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    add_rms_norm: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]
    gelu_tanh_and_mul: Callable[[torch.Tensor], torch.Tensor]
    rotary_embedding: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    fused_moe: Callable[..., torch.Tensor]  # (x, w13, w2, topk_weights, topk_ids, activation) -> [T, H]
    # NOTE: (positions, qkv, heads, kv_heads, head_dim, cos_sin_cache, is_neox, q_norm_w, k_norm_w, eps, k_buffer,
    # v_buffer, loc) -> q: head norms + rope + the KV store in one op (reference.qk_norm_rope_store_kv)
    qk_norm_rope_store_kv: Callable[..., torch.Tensor]

    def replace(self, **overrides: Callable[..., object]) -> Ops:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"unknown op(s) {sorted(unknown)}; known ops: {known}")
        return dataclasses.replace(self, **overrides)  # type: ignore[arg-type]


def reference_ops() -> Ops:
    return Ops(
        rms_norm=reference.rms_norm,
        add_rms_norm=reference.add_rms_norm,
        silu_and_mul=reference.silu_and_mul,
        gelu_tanh_and_mul=reference.gelu_tanh_and_mul,
        rotary_embedding=reference.rotary_embedding,
        fused_moe=moe.fused_moe,
        qk_norm_rope_store_kv=reference.qk_norm_rope_store_kv,
    )
