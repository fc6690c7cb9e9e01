"""DeepSeek-V2 / V2-Lite / V3: latent attention (deepseek_mla.py), dense first layers, then mixtures of routed and
shared experts.

Routing is each config's: V2 scores by softmax (``group_limited_greedy`` keeps the best ``topk_group`` of ``n_group``
groups by their best expert); V3 scores by sigmoid, ranks groups by their best two experts and experts by score +
``e_score_correction_bias``, but weighs them by the bare score. Both scale the weights by ``routed_scaling_factor``
and renormalise when ``norm_topk_prob`` says so. Rope is DeepSeek's interleaved-pair layout over the rope dims only.

NOTE: V3's multi-token-prediction layers (``model.layers.{num_hidden_layers}+``) are skipped when loading: they only
serve speculative decoding (``--speculative-algorithm NEXTN``, which loads the first as its draft head).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn

from sgl.core.memory.kv_pool import KVLayout
from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.embedding import VocabParallelEmbedding
from sgl.core.model.layernorm import RMSNorm
from sgl.core.model.moe import HF_EXPERT_PARAMS
from sgl.core.model.rotary import RotaryEmbedding, get_rope
from sgl.core.models.deepseek_mla import DeepseekMLA
from sgl.core.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel
from sgl.core.models.moe_block import SparseMoeBlock, load_moe_weights
from sgl.core.ops.moe_routing import RoutingConfig

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def deepseek_v2_routing(config: ModelConfig) -> tuple[RoutingConfig, bool]:
    """(routing, whether the gate carries a correction bias) for a V2 config."""
    grouped = config.get("topk_method", "greedy") == "group_limited_greedy"
    routing = RoutingConfig(
        top_k=int(config.num_experts_per_tok), num_experts=int(config.n_routed_experts),
        scoring=str(config.get("scoring_func", "softmax")), renormalize=bool(config.get("norm_topk_prob", False)),
        num_groups=int(config.get("n_group", 1)) if grouped else 1,
        topk_groups=int(config.get("topk_group", 1)) if grouped else 1,
        group_score="max", scale=float(config.get("routed_scaling_factor", 1.0)),
    )
    return routing, False


def deepseek_v3_routing(config: ModelConfig) -> tuple[RoutingConfig, bool]:
    routing = RoutingConfig(
        top_k=int(config.num_experts_per_tok), num_experts=int(config.n_routed_experts),
        scoring=str(config.get("scoring_func", "sigmoid")), renormalize=bool(config.get("norm_topk_prob", True)),
        num_groups=int(config.get("n_group", 1)), topk_groups=int(config.get("topk_group", 1)),
        group_score="top2_sum", scale=float(config.get("routed_scaling_factor", 1.0)),
    )
    return routing, config.get("topk_method", "noaux_tc") == "noaux_tc"


def deepseek_rope(config: ModelConfig, ctx: ModelContext) -> RotaryEmbedding:
    """DeepSeek's rope over the qk_rope_head_dim features (interleaved pairs unless rope_interleave is false)."""
    rope_dim = int(config.qk_rope_head_dim)
    # NOTE: transformers may rotate in halves (rope_interleave false); the cache holds the rotated key either way.
    interleave = bool(config.get("rope_interleave", True))
    return get_rope(rope_dim, rope_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling,
                    is_neox=not interleave, ctx=ctx)


def deepseek_mlp(config: ModelConfig, ctx: ModelContext, layer_id: int, routing_of: object) -> nn.Module:
    """Layer ``layer_id``'s MLP: dense for the first_k_dense_replace layers (and off moe_layer_freq), else routed
    experts plus the shared ones."""
    dense = layer_id < int(config.get("first_k_dense_replace", 0))
    if not config.get("n_routed_experts") or dense or layer_id % int(config.get("moe_layer_freq", 1)):
        return LlamaMLP(config, ctx)
    routing, bias = routing_of(config)  # type: ignore[operator]
    shared = int(config.moe_intermediate_size) * int(config.get("n_shared_experts") or 0)
    return SparseMoeBlock(config, ctx, routing, int(config.moe_intermediate_size), shared, bias, True)


class DeepseekV2Model(LlamaModel):
    """Llama's stack and forward, with DeepSeek's rope (interleaved pairs over qk_rope_head_dim) and MoE layers."""

    def __init__(self, config: ModelConfig, ctx: ModelContext, routing_of: object) -> None:
        nn.Module.__init__(self)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, ctx)
        rotary_emb = deepseek_rope(config, ctx)

        def mlp(config: ModelConfig, ctx: ModelContext, layer_id: int) -> nn.Module:
            return deepseek_mlp(config, ctx, layer_id, routing_of)

        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, ctx, i, rotary_emb, DeepseekMLA, mlp) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx)


class DeepseekV2ForCausalLM(LlamaForCausalLM):
    routing_of: ClassVar = staticmethod(deepseek_v2_routing)

    def __init__(self, config: ModelConfig, ctx: ModelContext) -> None:
        super().__init__(config, ctx)
        self.model = DeepseekV2Model(config, ctx, type(self).routing_of)

    def kv_layout(self) -> KVLayout:
        """One latent "head" per token: kv_lora_rank + qk_rope_head_dim features, the value its first kv_lora_rank."""
        c = self.config
        return KVLayout(1, int(c.kv_lora_rank) + int(c.qk_rope_head_dim), int(c.kv_lora_rank), latent=True)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        n = self.config.num_layers

        def own(name: str) -> bool:
            m = _LAYER.match(name)
            return m is None or int(m[1]) < n  # NOTE: MTP layers sit past the last decoder layer

        skip = {"lm_head.weight"} if self.lm_head.tied else set()
        kept = ((name, t) for name, t in weights if own(name))
        return load_moe_weights(self, kept, self.stacked_params_mapping, HF_EXPERT_PARAMS, skip)


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    routing_of: ClassVar = staticmethod(deepseek_v3_routing)
