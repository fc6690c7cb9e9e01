"""DeepSeek-V3's multi-token-prediction (MTP) layer as an EAGLE-style draft head: ``--speculative-algorithm NEXTN``.

V3 checkpoints carry ``num_nextn_predict_layers`` (1) extra layers past the decoder stack, at
``model.layers.{num_hidden_layers}``: ``enorm`` and ``hnorm`` (RMSNorms of the token embedding and of the target's
hidden state), ``eh_proj`` (2h -> h, no bias) over their concatenation, then a full DeepSeek decoder layer (latent
attention, routed and shared experts), then ``shared_head.norm`` and ``shared_head.head`` (an LM head). The embedding
is the target's. The output feature is the normed hidden state, which is what the next chained step reads in place
of the target's (the target's features are its final, normed, hidden states too).

The draft's KV cache holds that one layer, in the latent layout of the target.
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
from sgl.core.model.embedding import ParallelLMHead
from sgl.core.model.layernorm import RMSNorm
from sgl.core.model.linear import ReplicatedLinear
from sgl.core.model.moe import HF_EXPERT_PARAMS
from sgl.core.models.deepseek_mla import DeepseekMLA
from sgl.core.models.deepseek_v2 import DeepseekV2ForCausalLM, deepseek_mlp, deepseek_rope, deepseek_v3_routing
from sgl.core.models.llama import LlamaDecoderLayer
from sgl.core.models.moe_block import load_moe_weights
from sgl.core.runner.forward_batch import ForwardBatch
from sgl.plugins.speculative.eagle_models import TARGET_HIDDEN, EagleDraftHead

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class _SharedHead(nn.Module):
    def __init__(self, config: ModelConfig, ctx: ModelContext) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx)
        self.head = ParallelLMHead(config.vocab_size, config.hidden_size, ctx)


class DeepseekMTPLayer(LlamaDecoderLayer):
    """One MTP layer: the decoder layer's own parameters (names as in the checkpoint) and the MTP parts beside them."""

    def __init__(self, config: ModelConfig, ctx: ModelContext) -> None:
        mtp_index = config.num_layers  # NOTE: its MLP is the one layer num_hidden_layers would have (experts)

        def mlp(config: ModelConfig, ctx: ModelContext, layer_id: int) -> nn.Module:
            return deepseek_mlp(config, ctx, mtp_index, deepseek_v3_routing)

        # NOTE: layer id 0: the draft's KV pool holds this one layer
        super().__init__(config, ctx, 0, deepseek_rope(config, ctx), DeepseekMLA, mlp)
        h = config.hidden_size
        self.enorm = RMSNorm(h, config.rms_norm_eps, ctx)
        self.hnorm = RMSNorm(h, config.rms_norm_eps, ctx)
        self.eh_proj = ReplicatedLinear(2 * h, h, False, ctx)
        self.shared_head = _SharedHead(config, ctx)

    def predict(self, embeds: torch.Tensor, feats: torch.Tensor, positions: torch.Tensor,
                fb: ForwardBatch) -> torch.Tensor:
        x = self.eh_proj(torch.cat([self.enorm(embeds), self.hnorm(feats)], dim=-1))
        hidden, residual = self(positions, x, None, fb)
        normed, _ = self.shared_head.norm(hidden, residual)
        return normed


class _MTPStack(nn.Module):
    def __init__(self, config: ModelConfig, ctx: ModelContext) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DeepseekMTPLayer(config, ctx)])


class DeepseekV3ForCausalLMNextN(EagleDraftHead):
    """The V3 checkpoint's first MTP layer, read from the target's own checkpoint (SGLang's architecture name)."""

    stacked_params_mapping: ClassVar = DeepseekV2ForCausalLM.stacked_params_mapping
    kv_cache_layers = 1  # NOTE: the config's num_hidden_layers is the target's; the draft caches its one layer

    def __init__(self, config: ModelConfig, ctx: ModelContext) -> None:
        super().__init__(config)
        if int(config.get("num_nextn_predict_layers", 0)) < 1:
            raise ValueError(f"{config.path or 'this checkpoint'} has no multi-token-prediction layer "
                             "(num_nextn_predict_layers is 0): NEXTN has nothing to draft with")
        self.model = _MTPStack(config, ctx)

    def kv_layout(self) -> KVLayout:
        c = self.config
        return KVLayout(1, int(c.kv_lora_rank) + int(c.qk_rope_head_dim), int(c.kv_lora_rank), latent=True)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        feats = forward_batch.extras[TARGET_HIDDEN]
        return self.model.layers[0].predict(self.embed(input_ids), feats, positions, forward_batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.layers[0].shared_head.head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Only ``model.layers.{num_hidden_layers}.*`` (the first MTP layer), as this head's layer 0; its copy of the
        embedding is the target's and is not read."""
        mtp = str(self.config.num_layers)
        found = 0

        def own() -> Iterable[tuple[str, torch.Tensor]]:
            nonlocal found
            for name, tensor in weights:
                m = _LAYER.match(name)
                if m is not None and m[1] == mtp and not m[2].startswith("embed_tokens."):
                    found += 1
                    yield f"model.layers.0.{m[2]}", tensor

        loaded = load_moe_weights(self, own(), self.stacked_params_mapping, HF_EXPERT_PARAMS, set())
        if not found:
            raise ValueError(f"{self.config.path or 'this checkpoint'} has no multi-token-prediction layer (no "
                             f"model.layers.{mtp}.* tensors): NEXTN has nothing to draft with")
        return loaded
