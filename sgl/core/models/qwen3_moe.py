"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention with a softmax top-k mixture of experts.

A layer is sparse unless it is listed in ``mlp_only_layers`` or skipped by ``decoder_sparse_step``; the chosen
weights are renormalised when ``norm_topk_prob`` says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn

from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.moe import HF_EXPERT_PARAMS, ExpertParam
from sgl.core.models.llama import AttentionFactory, LlamaForCausalLM, LlamaMLP, MlpFactory
from sgl.core.models.moe_block import SparseMoeBlock, load_moe_weights
from sgl.core.models.qwen3 import Qwen3Attention
from sgl.core.ops.moe_routing import RoutingConfig


def num_experts(config: ModelConfig) -> int:
    # NOTE: Qwen's checkpoints say num_experts; transformers 5 writes num_local_experts (Mixtral's name) instead.
    return int(config.get("num_experts", config.get("num_local_experts", 0)))


def qwen3_moe_mlp(config: ModelConfig, ctx: ModelContext, layer_id: int) -> nn.Module:
    n = num_experts(config)
    step = int(config.get("decoder_sparse_step", 1))
    if n == 0 or layer_id in config.get("mlp_only_layers", []) or (layer_id + 1) % step:
        return LlamaMLP(config, ctx)
    routing = RoutingConfig(
        top_k=int(config.num_experts_per_tok), num_experts=n, renormalize=bool(config.get("norm_topk_prob", False))
    )
    return SparseMoeBlock(config, ctx, routing, int(config.moe_intermediate_size))


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    attention_factory: ClassVar[AttentionFactory] = Qwen3Attention
    mlp_factory: ClassVar[MlpFactory] = qwen3_moe_mlp
    expert_params: ClassVar[tuple[ExpertParam, ...]] = HF_EXPERT_PARAMS

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = {"lm_head.weight"} if self.lm_head.tied else set()
        return load_moe_weights(self, weights, self.stacked_params_mapping, self.expert_params, skip)
