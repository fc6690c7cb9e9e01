"""Qwen3 (dense): the Llama graph plus an RMSNorm over each q and k head before rope; head_dim comes from config."""

from __future__ import annotations

from typing import ClassVar

import torch

from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.layernorm import RMSNorm
from sgl.core.model.rotary import RotaryEmbedding
from sgl.core.models.llama import AttentionFactory, LlamaAttention, LlamaForCausalLM


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: ModelConfig, ctx: ModelContext, layer_id: int, rotary_emb: RotaryEmbedding) -> None:
        super().__init__(config, ctx, layer_id, rotary_emb)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ctx)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ctx)

    def transform_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # NOTE: the norm runs over head_dim, per head; rows of [T * heads, head_dim] keep ops' 2-D contract.
        q = self.q_norm(q.reshape(-1, self.head_dim)).view(q.shape)
        k = self.k_norm(k.reshape(-1, self.head_dim)).view(k.shape)
        return q, k


class Qwen3ForCausalLM(LlamaForCausalLM):
    attention_factory: ClassVar[AttentionFactory] = Qwen3Attention
