"""The attention layer: describes its heads to the backend and hands it q, k, v; the backend owns the KV cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from sgl.core.runner.forward_batch import ForwardBatch


class Attention(nn.Module):
    """Satisfies AttentionLayerInfo. Head counts are this rank's; ``layer_id`` picks the KV pool's layer buffers."""

    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, scaling: float, layer_id: int,
        v_head_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads cannot share {num_kv_heads} kv heads evenly")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.v_head_dim = v_head_dim or head_dim
        self.scaling = scaling
        self.layer_id = layer_id

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, forward_batch: ForwardBatch,
        save_kv_cache: bool = True,
    ) -> torch.Tensor:
        """q [T, H*D], k and v [T, KVH*D] -> [T, H*Dv]."""
        return forward_batch.attn_backend.forward(q, k, v, self, forward_batch, save_kv_cache)

    def extra_repr(self) -> str:
        return f"layer={self.layer_id}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}"
