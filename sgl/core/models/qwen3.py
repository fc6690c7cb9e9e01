"""Qwen3 (dense): the Llama graph plus an RMSNorm over each q and k head before rope; head_dim comes from config."""

from __future__ import annotations

from typing import ClassVar

from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.layernorm import RMSNorm
from sgl.core.model.rotary import RotaryEmbedding
from sgl.core.models.llama import AttentionFactory, HeadNorms, LlamaAttention, LlamaForCausalLM


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: ModelConfig, ctx: ModelContext, layer_id: int, rotary_emb: RotaryEmbedding) -> None:
        super().__init__(config, ctx, layer_id, rotary_emb)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ctx)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ctx)

    def head_norms(self) -> HeadNorms:
        return HeadNorms(self.q_norm, self.k_norm)


class Qwen3ForCausalLM(LlamaForCausalLM):
    attention_factory: ClassVar[AttentionFactory] = Qwen3Attention
