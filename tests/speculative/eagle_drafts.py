"""Test helper (not a test): EAGLE-1/2 and EAGLE-3 draft checkpoints for a target directory, in the public layouts
(config.json + model.safetensors with the names published EAGLE checkpoints use), with seeded random weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _target_config(target: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads((target / "config.json").read_text())
    return cfg


def _draft_config(t: dict[str, Any], arch: str, **extra: Any) -> dict[str, Any]:
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
            "max_position_embeddings", "rms_norm_eps", "rope_theta", "vocab_size", "bos_token_id", "eos_token_id",
            "torch_dtype")
    return {"architectures": [arch], "model_type": "llama", "num_hidden_layers": 1, "tie_word_embeddings": False,
            **{k: t[k] for k in keys if k in t}, **extra}


def _write(out: Path, config: dict[str, Any], weights: dict[str, torch.Tensor]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"))
    return out


def _layer(prefix: str, t: dict[str, Any], gen: torch.Generator, std: float, in_mult: int,
           input_norm: bool) -> dict[str, torch.Tensor]:
    h, inter = t["hidden_size"], t["intermediate_size"]
    d = t.get("head_dim", h // t["num_attention_heads"])
    q, kv = t["num_attention_heads"] * d, t["num_key_value_heads"] * d

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    w = {
        f"{prefix}self_attn.q_proj.weight": normal(q, in_mult * h),
        f"{prefix}self_attn.k_proj.weight": normal(kv, in_mult * h),
        f"{prefix}self_attn.v_proj.weight": normal(kv, in_mult * h),
        f"{prefix}self_attn.o_proj.weight": normal(h, q),
        f"{prefix}mlp.gate_proj.weight": normal(inter, h),
        f"{prefix}mlp.up_proj.weight": normal(inter, h),
        f"{prefix}mlp.down_proj.weight": normal(h, inter),
        f"{prefix}post_attention_layernorm.weight": torch.ones(h),
    }
    if input_norm:
        w[f"{prefix}input_layernorm.weight"] = torch.ones(h)
    return w


def write_eagle_draft(out: Path, target: Path, seed: int = 1, std: float = 0.1,
                      architecture: str = "LlamaForCausalLMEagle") -> Path:
    """EAGLE-1/2: ``fc`` (2H -> H, with bias), ``layers.0.*`` (no input norm); the target's embedding rides along as
    published checkpoints carry it (the draft uses the target's own)."""
    t = _target_config(target)
    gen = torch.Generator().manual_seed(seed)
    h = t["hidden_size"]
    w = {"fc.weight": torch.randn(h, 2 * h, generator=gen) * std, "fc.bias": torch.randn(h, generator=gen) * std,
         "embed_tokens.weight": torch.zeros(t["vocab_size"], h)}
    w.update(_layer("layers.0.", t, gen, std, 1, input_norm=False))
    return _write(out, _draft_config(t, architecture), w)


def write_eagle3_draft(out: Path, target: Path, seed: int = 2, std: float = 0.1, draft_vocab: int = 512,
                       aux_layer_ids: tuple[int, int, int] | None = (0, 1, 2)) -> Path:
    """EAGLE-3: ``fc`` (3H -> H), ``midlayer.*`` (qkv over 2H, hidden_norm), ``norm``, ``lm_head`` over
    ``draft_vocab`` tokens, ``d2t`` (draft id -> target id offset) and ``t2d`` (target ids kept)."""
    t = _target_config(target)
    gen = torch.Generator().manual_seed(seed)
    h, vocab = t["hidden_size"], t["vocab_size"]
    kept = torch.randperm(vocab, generator=gen)[:draft_vocab].sort().values
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[kept] = True
    w = {"fc.weight": torch.randn(h, 3 * h, generator=gen) * std, "norm.weight": torch.ones(h),
         "lm_head.weight": torch.randn(draft_vocab, h, generator=gen) * std,
         "d2t": kept - torch.arange(draft_vocab), "t2d": t2d}
    w.update(_layer("midlayer.", t, gen, std, 2, input_norm=True))
    w["midlayer.hidden_norm.weight"] = torch.ones(h)
    extra: dict[str, Any] = {"draft_vocab_size": draft_vocab}
    if aux_layer_ids is not None:
        extra["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(aux_layer_ids)}
    return _write(out, _draft_config(t, "LlamaForCausalLMEagle3", **extra), w)


def write_mirroring_pair(root: Path) -> tuple[Path, Path]:
    """A one-layer target and an EAGLE-1 head that computes almost what the target does, so most drafts are right.

    The head's ``fc`` passes the token embedding through (the target's feature is ignored) and its layer is the
    target's layer; the target's embedding rows have unit RMS, so the input norm the head lacks would change nothing.
    What remains different is EAGLE's own shift: the head's row at position p sees tokens 1..p+1, never token 0.
    """
    from safetensors.torch import load_file

    from sgl.core.demo_model import write_demo_model

    target = write_demo_model(root / "target", seed=3, num_layers=1)
    weights = load_file(str(target / "model.safetensors"))
    embed = weights["model.embed_tokens.weight"]
    weights["model.embed_tokens.weight"] = embed / embed.pow(2).mean(-1, keepdim=True).sqrt()
    save_file(weights, str(target / "model.safetensors"))
    t = _target_config(target)
    h = t["hidden_size"]
    w = {"fc.weight": torch.cat([torch.eye(h), torch.zeros(h, h)], dim=1), "fc.bias": torch.zeros(h)}
    for name, tensor in weights.items():
        if name.startswith("model.layers.0.") and "input_layernorm" not in name:
            w[name.removeprefix("model.")] = tensor
    return target, _write(root / "draft", _draft_config(t, "LlamaForCausalLMEagle"), w)
