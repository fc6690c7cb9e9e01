"""Multi-head latent attention (DeepSeek-V2/V3): keys and values are cached as one compressed latent per token.

Each token caches ``c = norm(kv_a(x))`` (kv_lora_rank features) and its rotated rope key (qk_rope_head_dim): one
"head" of ``kv_lora_rank + rope`` features shared by every query head (MLAKVPool). Attention runs in that latent
space: ``kv_b_proj``'s key half is absorbed into the query (q_nope @ W_UK) and its value half applied after attention
(o_latent @ W_UV^T), so the backend sees plain multi-query attention with head_dim ``kv_lora_rank + rope`` and
v_head_dim ``kv_lora_rank``, the value being the latent itself. Exact, since attention is linear in K and V.

NOTE: prefill runs the same absorbed form; SGLang's faster prefill (expanding the latent into per-head K and V) is
an optimisation that can come later without changing the cache.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sgl.core.model.attention import Attention
from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.layernorm import RMSNorm
from sgl.core.model.linear import (
    ColumnParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
    UnquantizedLinearMethod,
)
from sgl.core.model.rotary import RotaryEmbedding
from sgl.core.runner.forward_batch import ForwardBatch


def yarn_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def mla_softmax_scale(config: ModelConfig) -> float:
    """1/sqrt(qk_head_dim), times mscale^2 under YaRN rope scaling with ``mscale_all_dim`` (as DeepSeek's configs)."""
    scale = (int(config.qk_nope_head_dim) + int(config.qk_rope_head_dim)) ** -0.5
    rope = config.rope_scaling or {}
    if rope.get("mscale_all_dim"):
        m = yarn_mscale(float(rope["factor"]), float(rope["mscale_all_dim"]))
        scale *= m * m
    return scale


class DeepseekMLA(nn.Module):
    """Checkpoint names are DeepSeek's: q_proj or q_a_proj/q_a_layernorm/q_b_proj, kv_a_proj_with_mqa,
    kv_a_layernorm, kv_b_proj, o_proj. Query heads are split over tensor-parallel ranks; the latent is replicated."""

    def __init__(self, config: ModelConfig, ctx: ModelContext, layer_id: int, rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        hidden, bias = config.hidden_size, bool(config.get("attention_bias", False))
        self.nope, self.rope = int(config.qk_nope_head_dim), int(config.qk_rope_head_dim)
        self.v_dim, self.kv_lora = int(config.v_head_dim), int(config.kv_lora_rank)
        qk = self.nope + self.rope
        self.q_lora_rank = config.get("q_lora_rank")
        if self.q_lora_rank:
            self.q_a_proj = ReplicatedLinear(hidden, int(self.q_lora_rank), bias, ctx)
            self.q_a_layernorm = RMSNorm(int(self.q_lora_rank), config.rms_norm_eps, ctx)
            self.q_b_proj = ColumnParallelLinear(int(self.q_lora_rank), config.num_heads * qk, False, ctx)
        else:
            self.q_proj = ColumnParallelLinear(hidden, config.num_heads * qk, False, ctx)
        self.kv_a_proj_with_mqa = ReplicatedLinear(hidden, self.kv_lora + self.rope, bias, ctx)
        self.kv_a_layernorm = RMSNorm(self.kv_lora, config.rms_norm_eps, ctx)
        self.kv_b_proj = ColumnParallelLinear(self.kv_lora, config.num_heads * (self.nope + self.v_dim), False, ctx)
        self.o_proj = RowParallelLinear(config.num_heads * self.v_dim, hidden, bias, ctx)
        self.num_heads = config.num_heads // ctx.parallel.tp_size
        self.dtype = ctx.dtype
        self.rotary_emb = rotary_emb
        self.attn = Attention(
            self.num_heads, 1, self.kv_lora + self.rope, mla_softmax_scale(config), layer_id, v_head_dim=self.kv_lora
        )

    @torch.no_grad()
    def weights_loaded(self) -> None:
        """A quantized ``kv_b_proj`` (block FP8 in DeepSeek-V3's release) becomes its dequantized weight in the model's
        dtype, once, after loading: it is only ever used folded into attention, where the absorbed einsums need its
        matrix, not its product. The quantized tensors are dropped; the layer is dense from then on.

        NOTE: this costs 2 bytes a weight instead of one (V3: 16.8M weights a layer); attention's arithmetic sees the
        checkpoint's weights exactly up to the bf16 rounding of scale times value.
        """
        layer = self.kv_b_proj
        weight: Any = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_floating_point() and weight.element_size() > 1:
            return
        dense = layer.linear_method.dequantized_weight(layer).to(self.dtype)
        for name, _ in list(layer.named_parameters(recurse=False)):
            delattr(layer, name)
        layer.register_parameter("weight", nn.Parameter(dense.contiguous(), requires_grad=False))
        layer.register_parameter("bias", None)
        layer.linear_method = UnquantizedLinearMethod()

    def _absorbed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b_proj's weight split per head into W_UK [H, nope, kv_lora] and W_UV [H, v, kv_lora]."""
        weight: Any = self.kv_b_proj.weight
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.element_size() == 1:
            raise RuntimeError("MLA's absorbed projections need kv_b_proj dense: weights_loaded() has not run")
        w = weight.view(self.num_heads, self.nope + self.v_dim, self.kv_lora)
        return w[:, : self.nope], w[:, self.nope :]

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        t, h = hidden.shape[0], self.num_heads
        if self.q_lora_rank:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden)))
        else:
            q = self.q_proj(hidden)
        q_nope, q_pe = q.view(t, h, self.nope + self.rope).split([self.nope, self.rope], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(hidden).split([self.kv_lora, self.rope], dim=-1)
        latent = self.kv_a_layernorm(latent.contiguous())
        q_pe, k_pe = self.rotary_emb(positions, q_pe.reshape(t, h * self.rope), k_pe.contiguous())
        w_uk, w_uv = self._absorbed()
        q_latent = torch.einsum("thn,hnc->thc", q_nope, w_uk)
        q_full = torch.cat((q_latent, q_pe.view(t, h, self.rope)), dim=-1).reshape(t, -1)
        k_full = torch.cat((latent, k_pe), dim=-1)
        o_latent = self.attn(q_full, k_full, latent, forward_batch).view(t, h, self.kv_lora)
        return self.o_proj(torch.einsum("thc,hvc->thv", o_latent, w_uv).reshape(t, h * self.v_dim))
