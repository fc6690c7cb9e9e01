"""benchmarks/compiled_peer.py (the gpt-fast-style compiled peer), eagerly on the CPU with small shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.compiled_peer import PEER, build, load_config, make_step, rope_inv_freq

ROOT = Path(__file__).resolve().parents[2]


def small(name: str) -> dict[str, Any]:
    """The shipped config with 2 layers and small widths; rope, qk-norm, GQA ratio and tying kept."""
    cfg = load_config(name)
    group = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    cfg.update(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_key_value_heads=2,
               num_attention_heads=2 * group, head_dim=16, vocab_size=512)
    return cfg


@pytest.mark.parametrize("name", ["qwen3-0.6b", "llama-3.1-8b"])
def test_static_cache_decode_matches_a_full_forward_without_cache(name: str) -> None:
    torch.manual_seed(0)
    model = build(small(name), "cpu", torch.float32, max_seq=64)
    assert (model.lm_head is model.embed) == (name == "qwen3-0.6b")
    seq = torch.randint(0, 512, (20,))
    with torch.no_grad():
        model(seq[:12], torch.arange(12))  # prefill 12 positions into the static cache
        step = make_step(model, compile=False)
        for p in range(12, 20):  # then one token at a time, checked against the oracle at each length
            logits = model(seq[p:p + 1], torch.tensor([p]))[-1]
            full = model(seq[:p + 1], torch.arange(p + 1), use_cache=False)[-1]
            torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)
        assert step(seq[19:20], torch.tensor([19])).item() == full.argmax().item()


def test_bf16_decode_stays_close_to_the_oracle() -> None:
    model = build(small("llama-3.1-8b"), "cpu", torch.bfloat16, max_seq=32)
    seq = torch.randint(0, 512, (10,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(seq[:9], torch.arange(9))
        logits = model(seq[9:], torch.tensor([9]))[-1]
        full = model(seq, torch.arange(10), use_cache=False)[-1]
    torch.testing.assert_close(logits, full, rtol=0.05, atol=0.02)


def test_llama3_rope_scaling_matches_transformers() -> None:
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = load_config("llama-3.1-8b")
    hf, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**cfg), "cpu")
    torch.testing.assert_close(rope_inv_freq(cfg, 128), hf.float())
    plain = rope_inv_freq(load_config("qwen3-0.6b"), 128)
    torch.testing.assert_close(plain, 1.0 / 1e6 ** (torch.arange(0, 128, 2).float() / 128))


@pytest.mark.parametrize("name,arch", [("qwen3-0.6b", "Qwen3ForCausalLM"), ("llama-3.1-8b", "LlamaForCausalLM")])
def test_full_forward_matches_transformers_with_the_same_weights(name: str, arch: str) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = small(name)
    model = build(cfg, "cpu", torch.float32, max_seq=32)
    hcfg = transformers.AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items()
                                                                   if k != "model_type"})
    hf = getattr(transformers, arch)(hcfg).float().eval()
    q, kv, inter = cfg["num_attention_heads"] * 16, cfg["num_key_value_heads"] * 16, cfg["intermediate_size"]
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.embed, "model.norm.weight": model.norm,
                                   "lm_head.weight": model.lm_head}
    for i, layer in enumerate(model.layers):
        pre = f"model.layers.{i}."
        wq, wk, wv = layer.wqkv.split([q, kv, kv])
        sd.update({pre + "self_attn.q_proj.weight": wq, pre + "self_attn.k_proj.weight": wk,
                   pre + "self_attn.v_proj.weight": wv, pre + "self_attn.o_proj.weight": layer.wo,
                   pre + "mlp.gate_proj.weight": layer.w13[:inter], pre + "mlp.up_proj.weight": layer.w13[inter:],
                   pre + "mlp.down_proj.weight": layer.w2, pre + "input_layernorm.weight": layer.attn_norm,
                   pre + "post_attention_layernorm.weight": layer.mlp_norm})
        if name.startswith("qwen3"):
            sd.update({pre + "self_attn.q_norm.weight": layer.q_norm, pre + "self_attn.k_norm.weight": layer.k_norm})
    hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    seq = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(seq[0], torch.arange(12), use_cache=False)
        theirs = hf(seq).logits[0].float()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_cli_prints_one_json_line_per_model_on_the_cpu() -> None:
    res = subprocess.run([sys.executable, "-m", "benchmarks.compiled_peer", "qwen3-0.6b", "--device", "cpu",
                          "--no-compile", "--layers", "1", "--tokens", "4"],
                         check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    row = lines[0]
    assert row["model"] == "qwen3-0.6b" and row["peer"] == PEER
    assert len(row["runs"]) == 3 and row["decode_tok_s"] == sorted(row["runs"])[1] > 0
    assert row["compile_s"] >= 0 and row["compiled"] is False
