"""Test helper (not a test): tiny random MoE and MLA checkpoints written by transformers itself.

Each config is small but keeps what makes its family differ: several experts with top-k > 1, dense and sparse
layers side by side, shared experts, DeepSeek's grouped routing and latent attention (with and without a q LoRA).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from tests.core.tiny_models import TINY

MOE_ARCHS = ("qwen3_moe", "mixtral", "deepseek_v2", "deepseek_v3")

_MLA: dict[str, Any] = {
    "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 24,
    "moe_intermediate_size": 32, "n_shared_experts": 2, "first_k_dense_replace": 1, "num_hidden_layers": 3,
    "num_key_value_heads": 4,  # NOTE: HF expands the latent to every head and repeats by heads / kv heads
}


def moe_config(arch: str, **overrides: Any) -> Any:
    from transformers import DeepseekV2Config, DeepseekV3Config, MixtralConfig, Qwen3MoeConfig

    kw: dict[str, Any] = dict(TINY)
    if arch == "qwen3_moe":
        # NOTE: layer 1 is dense (mlp_only_layers): a model that makes every layer sparse fails to load.
        cls: Any = Qwen3MoeConfig
        kw.update(num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, norm_topk_prob=True, head_dim=32,
                  num_hidden_layers=3, mlp_only_layers=[1], use_sliding_window=False)
    elif arch == "mixtral":
        cls = MixtralConfig
        kw.update(num_local_experts=4, num_experts_per_tok=2, sliding_window=None)
    elif arch == "deepseek_v2":
        # NOTE: group-limited greedy routing over 4 groups of 2, and a plain q projection (no q LoRA).
        cls = DeepseekV2Config
        kw.update(_MLA, n_routed_experts=8, num_experts_per_tok=3, q_lora_rank=None,
                  topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=1.5)
    elif arch == "deepseek_v3":
        cls = DeepseekV3Config
        kw.update(_MLA, n_routed_experts=8, num_experts_per_tok=2, q_lora_rank=24, n_group=4, topk_group=2,
                  routed_scaling_factor=2.5, norm_topk_prob=True)
    else:
        raise ValueError(f"unknown tiny MoE arch {arch!r}; known: {', '.join(MOE_ARCHS)}")
    kw.update(overrides)
    return cls(**kw)


def make_tiny_moe_model(arch: str, path: str | os.PathLike[str], seed: int = 0, **overrides: Any) -> str:
    """Writes a tiny random fp32 HF checkpoint of ``arch``; 1-D tensors (norms, biases) get noise so loading shows."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(moe_config(arch, **overrides), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 3 or ("gate" in name and "proj" not in name):
                # NOTE: experts and routers get a wider spread, so each token's choice of experts matters.
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
    path = os.fspath(path)
    model.save_pretrained(path)
    return path
