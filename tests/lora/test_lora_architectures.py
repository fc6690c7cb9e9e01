"""Every supported architecture serves PEFT adapters: greedy tokens equal transformers + peft, with two adapters
(one on attention, one on the MLP) and the base model in one batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.core.engine_utils import make_engine
from tests.core.tiny_models import ARCHS, make_tiny_hf_model
from tests.lora.peft_adapters import load_peft_model, make_peft_adapter, oracle_greedy

NEW = 6


@pytest.mark.parametrize("arch", ARCHS)
def test_adapters_match_peft_on_every_architecture(tmp_path: Path, demo_model_dir: Path, arch: str) -> None:
    model_dir = make_tiny_hf_model(arch, tmp_path / arch, seed=1)
    attn = make_peft_adapter(model_dir, tmp_path / "attn", rank=4, seed=2, scale=0.3,
                             target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    mlp = make_peft_adapter(model_dir, tmp_path / "mlp", rank=16, seed=3, scale=0.2, use_rslora=True,
                            target_modules=("gate_proj", "up_proj", "down_proj"))
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 17, 9)]
    loras = ["attn", None, "mlp"]
    with make_engine(model_dir, tokenizer_path=str(demo_model_dir), lora_paths=[f"attn={attn}", f"mlp={mlp}"],
                     lora_backend="torch") as engine:
        got = engine.generate(input_ids=prompts, sampling_params={"temperature": 0, "max_new_tokens": NEW,
                                                                  "ignore_eos": True}, lora_path=loras)
    paths = {"attn": attn, "mlp": mlp, None: None}
    want = [oracle_greedy(load_peft_model(model_dir, paths[lora]), p, NEW)[0] for p, lora in zip(prompts, loras)]
    assert [o["output_ids"] for o in got] == want


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral", "deepseek_v2"])
def test_attention_adapters_match_peft_on_moe_architectures(tmp_path: Path, demo_model_dir: Path, arch: str) -> None:
    """MoE models: adapters on the attention projections (their experts are fused, not per-projection layers)."""
    from tests.models.tiny_moe import make_tiny_moe_model

    model_dir = make_tiny_moe_model(arch, tmp_path / arch, seed=1)
    modules = ("o_proj",) if arch.startswith("deepseek") else ("q_proj", "k_proj", "v_proj", "o_proj")
    attn = make_peft_adapter(model_dir, tmp_path / "attn", rank=8, seed=2, scale=0.3, target_modules=modules)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (7, 12)]
    with make_engine(model_dir, tokenizer_path=str(demo_model_dir), lora_paths=[f"attn={attn}"],
                     lora_backend="torch") as engine:
        got = engine.generate(input_ids=prompts, sampling_params={"temperature": 0, "max_new_tokens": NEW,
                                                                  "ignore_eos": True}, lora_path=["attn", None])
    want = [oracle_greedy(load_peft_model(model_dir, path), p, NEW)[0] for p, path in zip(prompts, [attn, None])]
    assert [o["output_ids"] for o in got] == want
    assert want[0] != oracle_greedy(load_peft_model(model_dir, None), prompts[0], NEW)[0], "the adapter must matter"
