"""EAGLE draft heads in the public checkpoint layouts: ``LlamaForCausalLMEagle`` (EAGLE-1/2) and
``LlamaForCausalLMEagle3``. Each predicts the target's next feature from a token and the target's features, then a
token from that feature; the draft algorithm (``eagle.py``) feeds them and chains their outputs.

- EAGLE-1/2: ``fc`` (with bias) maps concat(token embedding, target's final hidden state) to the hidden size, then
  ``layers.*`` are Llama decoder layers (layer 0 without its input norm); the output (residual added, no final norm)
  is the next feature and goes through the target's LM head. The embedding and LM head are the target's.
- EAGLE-3: ``fc`` (bias only if ``bias``) maps concat(three target layers' residual streams) to the hidden size;
  ``midlayer`` attends over concat(input_layernorm(embedding), hidden_norm(feature)) (its qkv projection takes twice
  the hidden size); ``norm`` then ``lm_head`` give logits over ``draft_vocab_size`` tokens, and ``d2t`` maps draft
  id d to target id d + d2t[d]. The embedding is the target's.

The target's features for each row arrive in ``forward_batch.extras[TARGET_HIDDEN]``: the target's (EAGLE-3: the
three layers concatenated) for rows that follow a target forward, the draft's own output for chained draft steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.embedding import ParallelLMHead
from sgl.core.model.layernorm import RMSNorm
from sgl.core.model.linear import QKVParallelLinear, ReplicatedLinear
from sgl.core.model.rotary import RotaryEmbedding, get_rope
from sgl.core.model.weights import load_stacked_weights
from sgl.core.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP
from sgl.core.runner.forward_batch import ForwardBatch

TARGET_HIDDEN = "speculative.target_hidden"


def _rope(config: ModelConfig, ctx: ModelContext) -> RotaryEmbedding:
    return get_rope(config.head_dim, int(config.head_dim * config.partial_rotary_factor),
                    config.max_position_embeddings, config.rope_theta, config.rope_scaling, is_neox=True, ctx=ctx)


class EagleDraftHead(nn.Module):
    """What the EAGLE algorithm calls: ``bind_target`` once, ``forward`` -> next features [T, hidden],
    ``compute_logits`` over the draft vocabulary, ``to_target_ids`` for the tokens it picked."""

    stacked_params_mapping: ClassVar = LlamaForCausalLM.stacked_params_mapping
    shared_names: ClassVar[tuple[str, ...]] = ("embed_tokens.weight",)  # the target's, never the checkpoint's

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self._target: list[Any] = []  # NOTE: a list, not a submodule: the target's weights are not the draft's

    def bind_target(self, target: Any) -> None:
        """Shares the target's embedding (and, where the head has none of its own, its LM head)."""
        if target.config.hidden_size != self.target_hidden_size:
            raise ValueError(f"the draft expects a target hidden size of {self.target_hidden_size}, "
                             f"the target has {target.config.hidden_size}")
        self._target[:] = [target.get_input_embeddings(), target]

    @property
    def target_hidden_size(self) -> int:
        return int(self.config.get("target_hidden_size", self.config.hidden_size))

    @property
    def graph_row_inputs(self) -> dict[str, int]:
        """What a decode graph must feed per row (the graph runner's contract): a chained draft step's feature,
        the draft's own output."""
        return {TARGET_HIDDEN: int(self.config.hidden_size)}

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._target[0](input_ids)

    def to_target_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Features [N, hidden] -> fp32 logits over the draft vocabulary."""
        raise NotImplementedError

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint names are the inner model's (``fc.weight``, ``layers.0...`` / ``midlayer...``)."""
        params = {n for n, _ in self.named_parameters()}

        def renamed() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name in self.shared_names or self.take_extra(name, tensor):
                    continue
                yield (name if name in params or name.startswith(("model.", "lm_head.")) else f"model.{name}"), tensor

        return load_stacked_weights(self, renamed(), self.stacked_params_mapping)

    def take_extra(self, name: str, tensor: torch.Tensor) -> bool:
        """A checkpoint tensor that is not a parameter (EAGLE-3's vocabulary maps); True when consumed."""
        return False


class _NoNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class EagleModel(nn.Module):
    def __init__(self, config: ModelConfig, ctx: ModelContext, target_hidden: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.fc = ReplicatedLinear(h + target_hidden, h, bool(config.get("bias", True)), ctx)
        rope = _rope(config, ctx)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, ctx, i, rope) for i in range(config.num_layers))
        self.layers[0].input_layernorm = _NoNorm()  # NOTE: as EAGLE trained it: fc's output goes in unnormed

    def forward(
        self, embeds: torch.Tensor, feats: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch
    ) -> torch.Tensor:
        hidden = self.fc(torch.cat([embeds, feats], dim=-1))
        residual: torch.Tensor | None = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, fb)
        return hidden if residual is None else hidden + residual


class LlamaForCausalLMEagle(EagleDraftHead):
    """EAGLE-1/2: the next feature is what the target's LM head reads."""

    shared_names = ("embed_tokens.weight", "lm_head.weight", "layers.0.input_layernorm.weight")

    def __init__(self, config: ModelConfig, ctx: ModelContext) -> None:
        super().__init__(config)
        self.model = EagleModel(config, ctx, self.target_hidden_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        feats = forward_batch.extras[TARGET_HIDDEN]
        return self.model(self.embed(input_ids), feats, positions, forward_batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._target[1].compute_logits(hidden)


class Eagle3DecoderLayer(nn.Module):
    """Attention over concat(normed embedding, normed feature); the feature is the residual stream."""

    def __init__(self, config: ModelConfig, ctx: ModelContext, rope: RotaryEmbedding) -> None:
        super().__init__()
        h = config.hidden_size
        self.self_attn = LlamaAttention(config, ctx, 0, rope)
        self.self_attn.qkv_proj = QKVParallelLinear(
            2 * h, config.head_dim, config.num_heads, config.num_kv_heads, bool(config.get("attention_bias", False)),
            ctx,
        )
        self.mlp = LlamaMLP(config, ctx, bias=bool(config.get("mlp_bias", False)))
        self.input_layernorm = RMSNorm(h, config.rms_norm_eps, ctx)
        self.hidden_norm = RMSNorm(h, config.rms_norm_eps, ctx)
        self.post_attention_layernorm = RMSNorm(h, config.rms_norm_eps, ctx)

    def forward(self, positions: torch.Tensor, embeds: torch.Tensor, feats: torch.Tensor,
                fb: ForwardBatch) -> torch.Tensor:
        x = torch.cat([self.input_layernorm(embeds), self.hidden_norm(feats)], dim=-1)
        x = self.self_attn(positions, x, fb)
        x, residual = self.post_attention_layernorm(x, feats)
        return self.mlp(x) + residual


class Eagle3Model(nn.Module):
    def __init__(self, config: ModelConfig, ctx: ModelContext, target_hidden: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.fc = ReplicatedLinear(3 * target_hidden, h, bool(config.get("bias", False)), ctx)
        self.midlayer = Eagle3DecoderLayer(config, ctx, _rope(config, ctx))
        self.norm = RMSNorm(h, config.rms_norm_eps, ctx)

    def forward(
        self, embeds: torch.Tensor, feats: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch
    ) -> torch.Tensor:
        if feats.shape[-1] == self.fc.in_features and feats.shape[-1] != embeds.shape[-1]:
            feats = self.fc(feats)  # NOTE: the target's three layers; a chained step feeds the draft's own feature
        return self.midlayer(positions, embeds, feats, fb)


class LlamaForCausalLMEagle3(EagleDraftHead):
    """EAGLE-3: its own LM head over a reduced vocabulary, mapped to the target's by ``d2t``."""

    hot_token_ids: torch.Tensor  # draft id -> target id

    def __init__(self, config: ModelConfig, ctx: ModelContext) -> None:
        super().__init__(config)
        self.model = Eagle3Model(config, ctx, self.target_hidden_size)
        self.draft_vocab_size = int(config.get("draft_vocab_size", config.vocab_size))
        self.own_head = not config.tie_word_embeddings
        if self.own_head:
            self.lm_head = ParallelLMHead(self.draft_vocab_size, config.hidden_size, ctx)
        elif self.draft_vocab_size != config.vocab_size:
            raise ValueError("an EAGLE-3 draft with tied embeddings must draft over the whole vocabulary")
        self.register_buffer("hot_token_ids", torch.arange(self.draft_vocab_size), persistent=False)

    @property
    def aux_layers(self) -> tuple[int, ...] | None:
        """The target layers whose outputs feed ``fc`` (the checkpoint's, as ids of layers whose output is read)."""
        ids = (self.config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        return None if ids is None else tuple(int(i) for i in ids)

    def take_extra(self, name: str, tensor: torch.Tensor) -> bool:
        if name.endswith("d2t"):
            if tensor.numel() != self.draft_vocab_size:
                raise ValueError(f"d2t has {tensor.numel()} entries; draft_vocab_size is {self.draft_vocab_size}")
            self.hot_token_ids.copy_(tensor.to(torch.int64) + torch.arange(self.draft_vocab_size))
            return True
        if name.endswith("t2d"):
            return True  # NOTE: the inverse map (a mask over the target vocabulary); d2t alone maps the drafts
        return name == "lm_head.weight" and not self.own_head

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        feats = forward_batch.extras[TARGET_HIDDEN]
        return self.model(self.embed(input_ids), feats, positions, forward_batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        normed = self.model.norm(hidden)
        return self.lm_head.compute_logits(normed) if self.own_head else self._target[1].compute_logits(normed)

    def to_target_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hot_token_ids.index_select(0, ids)
