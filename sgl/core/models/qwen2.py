"""Qwen2 / Qwen2.5: the Llama graph with a bias on the q, k, v projections (none on o_proj)."""

from __future__ import annotations

from typing import ClassVar

from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.rotary import RotaryEmbedding
from sgl.core.models.llama import AttentionFactory, LlamaAttention, LlamaForCausalLM


def qwen2_attention(
    config: ModelConfig, ctx: ModelContext, layer_id: int, rotary_emb: RotaryEmbedding
) -> LlamaAttention:
    return LlamaAttention(config, ctx, layer_id, rotary_emb, qkv_bias=True, o_bias=False)


class Qwen2ForCausalLM(LlamaForCausalLM):
    attention_factory: ClassVar[AttentionFactory] = qwen2_attention
