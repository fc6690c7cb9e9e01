"""Llama 2 / 3 / 3.1 / 3.2 (tied embeddings), and the decoder blocks Mistral, Qwen2 and Qwen3 reuse.

The variants differ in small, named ways (q/k/v bias, per-head q/k norms), so each is a constructor argument or a
subclass hook here rather than a copy of this file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from sgl.core.attention.base import KVStoreTarget
from sgl.core.model.attention import Attention
from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.embedding import ParallelLMHead, VocabParallelEmbedding
from sgl.core.model.layernorm import RMSNorm
from sgl.core.model.linear import (
    GatedActivation,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from sgl.core.model.rotary import RotaryEmbedding, get_rope
from sgl.core.model.weights import StackedParam, load_stacked_weights
from sgl.core.runner.forward_batch import ForwardBatch


class HeadNorms(NamedTuple):
    """Per-head q and k RMSNorms (Qwen3). NOTE: one eps for both (the fused prologue takes one)."""

    q: RMSNorm
    k: RMSNorm


class LlamaMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up fused into one column-parallel GEMM."""

    def __init__(
        self, config: ModelConfig, ctx: ModelContext, bias: bool = False, intermediate_size: int | None = None,
        reduce_results: bool = True,
    ) -> None:
        super().__init__()
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r}; this MLP implements 'silu'")
        inter = intermediate_size or config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [inter] * 2, bias, ctx)
        self.down_proj = RowParallelLinear(inter, config.hidden_size, bias, ctx, reduce_results=reduce_results)
        self.act = GatedActivation("silu", ctx.ops.silu_and_mul)
        self.fuse_act = ctx.layer_fusion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.fuse_act:  # NOTE: the linear method applies the activation, in its GEMM where it can
            return self.down_proj(gate_up, act=self.act)
        return self.down_proj(self.act.op(gate_up))


class LlamaAttention(nn.Module):
    """qkv GEMM -> (optional per-head q/k transform) -> rope -> paged attention -> o GEMM."""

    def __init__(
        self,
        config: ModelConfig,
        ctx: ModelContext,
        layer_id: int,
        rotary_emb: RotaryEmbedding,
        qkv_bias: bool | None = None,
        o_bias: bool | None = None,
    ) -> None:
        super().__init__()
        attention_bias = bool(config.get("attention_bias", False))
        self.head_dim = config.head_dim
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, config.num_heads, config.num_kv_heads,
            attention_bias if qkv_bias is None else qkv_bias, ctx,
        )
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.q_size = self.qkv_proj.q_size
        self.kv_size = self.qkv_proj.kv_size
        self.o_proj = RowParallelLinear(
            config.num_heads * self.head_dim, config.hidden_size,
            attention_bias if o_bias is None else o_bias, ctx,
        )
        self.rotary_emb = rotary_emb
        self.attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim**-0.5, layer_id)
        self.ops = ctx.ops
        # NOTE: the fused prologue knows head norms and plain rope only: a subclass that overrides transform_qk, or a
        # rope module that overrides forward, keeps the unfused ops
        self.fused_prologue = (
            ctx.layer_fusion
            and type(self).transform_qk is LlamaAttention.transform_qk
            and type(rotary_emb).forward is RotaryEmbedding.forward
        )

    def head_norms(self) -> HeadNorms | None:
        """RMSNorms over each q and k head before rope (Qwen3); None for Llama."""
        return None

    def transform_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook between the projection and rope: the head norms where the model has them."""
        norms = self.head_norms()
        if norms is None:
            return q, k
        # NOTE: the norm runs over head_dim, per head; rows of [T * heads, head_dim] keep ops' 2-D contract.
        q = norms.q(q.reshape(-1, self.head_dim)).view(q.shape)
        k = norms.k(k.reshape(-1, self.head_dim)).view(k.shape)
        return q, k

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        target = forward_batch.attn_backend.kv_store_target(self.attn, forward_batch) if self.fused_prologue else None
        if target is not None:
            q = self._fused_prologue(positions, qkv, target)
            # NOTE: k and v (unrotated) are not read: the backend was told they are stored already
            return self.o_proj(self.attn(q, k, v, forward_batch, save_kv_cache=False))
        q, k = self.transform_qk(q, k)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v.contiguous(), forward_batch))

    def _fused_prologue(self, positions: torch.Tensor, qkv: torch.Tensor, target: KVStoreTarget) -> torch.Tensor:
        """Head norms, rope and the KV store in one op (one kernel where the platform has it); returns q."""
        norms, rope = self.head_norms(), self.rotary_emb
        if norms is not None and norms.q.eps != norms.k.eps:
            raise ValueError(f"the fused prologue takes one eps for both head norms: q {norms.q.eps}, k {norms.k.eps}")
        return self.ops.qk_norm_rope_store_kv(
            positions, qkv, self.num_heads, self.num_kv_heads, self.head_dim, rope.cos_sin_cache, rope.is_neox,
            norms.q.weight if norms else None, norms.k.weight if norms else None, norms.q.eps if norms else 0.0,
            target.k_buffer, target.v_buffer, target.loc,
        )


AttentionFactory = Callable[[ModelConfig, ModelContext, int, RotaryEmbedding], nn.Module]
# NOTE: the feed-forward block of layer ``layer_id``: a dense MLP here, a mixture of experts in the MoE families.
MlpFactory = Callable[[ModelConfig, ModelContext, int], nn.Module]


def llama_mlp(config: ModelConfig, ctx: ModelContext, layer_id: int) -> nn.Module:
    return LlamaMLP(config, ctx, bias=bool(config.get("mlp_bias", False)))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block; the residual stream is carried separately so norms can fuse the residual add."""

    def __init__(
        self, config: ModelConfig, ctx: ModelContext, layer_id: int, rotary_emb: RotaryEmbedding,
        attention_factory: AttentionFactory = LlamaAttention, mlp_factory: MlpFactory = llama_mlp,
    ) -> None:
        super().__init__()
        self.self_attn = attention_factory(config, ctx, layer_id, rotary_emb)
        self.mlp = mlp_factory(config, ctx, layer_id)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
        forward_batch: ForwardBatch,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, forward_batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(
        self, config: ModelConfig, ctx: ModelContext, attention_factory: AttentionFactory = LlamaAttention,
        mlp_factory: MlpFactory = llama_mlp,
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, ctx)
        # NOTE: one rope table shared by every layer (it can be large: max_position x rotary_dim fp32).
        rotary_emb = get_rope(
            config.head_dim,
            int(config.head_dim * config.partial_rotary_factor),
            config.max_position_embeddings,
            config.rope_theta,
            config.rope_scaling,
            is_neox=True,
            ctx=ctx,
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, ctx, i, rotary_emb, attention_factory, mlp_factory)
            for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        capture = forward_batch.capture_hidden_layers
        for i, layer in enumerate(self.layers):
            if capture:
                _capture(forward_batch, i, hidden, residual)
            hidden, residual = layer(positions, hidden, residual, forward_batch)
        if capture:
            _capture(forward_batch, len(self.layers), hidden, residual)
        if residual is None:  # a model with no layers
            return self.norm(hidden)
        hidden, _ = self.norm(hidden, residual)
        return hidden


def _capture(forward_batch: ForwardBatch, layer: int, hidden: torch.Tensor, residual: torch.Tensor | None) -> None:
    """Records the residual stream entering ``layer`` when the batch asks for it."""
    if layer in forward_batch.capture_hidden_layers:
        forward_batch.captured_hidden[layer] = hidden if residual is None else hidden + residual


class LlamaForCausalLM(nn.Module):
    """The shared model contract: forward -> final hidden states, compute_logits -> fp32, load_weights -> names."""

    attention_factory: ClassVar[AttentionFactory] = LlamaAttention
    mlp_factory: ClassVar[MlpFactory] = llama_mlp
    stacked_params_mapping: ClassVar[tuple[StackedParam, ...]] = (
        StackedParam(".qkv_proj", ".q_proj", "q"),
        StackedParam(".qkv_proj", ".k_proj", "k"),
        StackedParam(".qkv_proj", ".v_proj", "v"),
        StackedParam(".gate_up_proj", ".gate_proj", 0),
        StackedParam(".gate_up_proj", ".up_proj", 1),
    )

    def __init__(self, config: ModelConfig, ctx: ModelContext) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, ctx, type(self).attention_factory, type(self).mlp_factory)
        tie_to = self.model.embed_tokens if config.tie_word_embeddings else None
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, ctx, tie_to=tie_to)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        """input_ids, positions [T] -> hidden [T, hidden] after the final norm."""
        return self.model(input_ids, positions, forward_batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> fp32 logits [N, vocab]."""
        return self.lm_head.compute_logits(hidden)

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding (input_ids [T] -> [T, hidden]), which a speculative draft head may share."""
        return self.model.embed_tokens

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Loads HF-named tensors (q/k/v into qkv_proj, gate/up into gate_up_proj); returns the parameters loaded."""
        # NOTE: tied checkpoints may still carry lm_head.weight; the embedding is the one tensor that counts.
        skip = {"lm_head.weight"} if self.lm_head.tied else set()
        return load_stacked_weights(self, weights, self.stacked_params_mapping, skip)
