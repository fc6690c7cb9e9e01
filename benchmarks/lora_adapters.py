"""Seeded random LoRA adapters in PEFT's on-disk layout (adapter_config.json + adapter_model.safetensors), sized from
a model's config.json alone, so a GPU box without ``peft`` (or the model's weights) can make them.

The layout is what ``peft``'s ``save_pretrained`` writes and ``sgl.plugins.lora.peft_adapter`` reads: tensors
``base_model.model.<module>.lora_A.weight`` [r, in] and ``...lora_B.weight`` [out, r] for every layer's projection.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def projection_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each projection of a dense Llama-style decoder layer."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    return {
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim), "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden),
    }


def write_adapter(
    model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], rank: int, seed: int, scale: float = 0.1,
    target_modules: tuple[str, ...] = ALL_MODULES,
) -> str:
    """Writes a rank-``rank`` adapter on every layer's ``target_modules`` and returns its directory.

    A ~ N(0, 1/in) and B ~ N(0, scale^2/r) with lora_alpha = r (scaling 1), so an update's size is about ``scale``
    times its input's RMS whatever the model's width: large enough to change greedy tokens, small enough that a
    32-layer model stays finite in bf16.
    """
    from safetensors.torch import save_file

    config = json.loads((Path(model_dir) / "config.json").read_text())
    shapes = projection_shapes(config)
    dtype = getattr(torch, str(config.get("torch_dtype") or "float32"))
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(int(config["num_hidden_layers"])):
        for proj in target_modules:
            fan_in, fan_out = shapes[proj]
            key = f"base_model.model.model.layers.{layer}.{_PARENT[proj]}.{proj}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=gen) / fan_in ** 0.5).to(dtype)
            b = torch.randn(fan_out, rank, generator=gen) * (scale / rank ** 0.5)
            tensors[f"{key}.lora_B.weight"] = b.to(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": os.fspath(model_dir),
        "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "target_modules": list(target_modules), "bias": "none",
        "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
        "layers_to_transform": None, "layers_pattern": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(peft_config, indent=2) + "\n")
    return os.fspath(out)
