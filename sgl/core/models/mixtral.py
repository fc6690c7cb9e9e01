"""Mixtral 8x7B / 8x22B: Mistral's attention with a softmax top-2 mixture of experts, always renormalised.

Checkpoints name the block ``block_sparse_moe`` and the experts' projections w1 (gate), w3 (up), w2 (down).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn

from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.moe import MIXTRAL_EXPERT_PARAMS
from sgl.core.models.llama import LlamaForCausalLM, MlpFactory
from sgl.core.models.moe_block import SparseMoeBlock, load_moe_weights
from sgl.core.ops.moe_routing import RoutingConfig


def mixtral_moe(config: ModelConfig, ctx: ModelContext, layer_id: int) -> nn.Module:
    routing = RoutingConfig(
        top_k=int(config.num_experts_per_tok), num_experts=int(config.num_local_experts), renormalize=True
    )
    return SparseMoeBlock(config, ctx, routing, config.intermediate_size)


class MixtralForCausalLM(LlamaForCausalLM):
    mlp_factory: ClassVar[MlpFactory] = mixtral_moe

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        renamed = ((name.replace(".block_sparse_moe.", ".mlp."), t) for name, t in weights)
        return load_moe_weights(self, renamed, self.stacked_params_mapping, MIXTRAL_EXPERT_PARAMS)
