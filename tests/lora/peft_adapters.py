"""Test helper (not a test): PEFT LoRA adapters made with ``peft`` itself on a model directory, and the HF + peft
oracle that runs them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_peft_adapter(
    model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], rank: int = 4, seed: int = 0,
    target_modules: Sequence[str] = ALL_MODULES, alpha: int | None = None, use_rslora: bool = False,
    scale: float = 0.1,
) -> str:
    """Writes a seeded random adapter (A and B both non-zero, so it changes the model) with peft's save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(os.fspath(model_dir), dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, target_modules=list(target_modules),
                     lora_dropout=0.0, use_rslora=use_rslora, init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(os.fspath(out_dir))
    return os.fspath(out_dir)


def load_peft_model(model_dir: str | os.PathLike[str], adapter_dir: str | os.PathLike[str] | None) -> Any:
    """The HF oracle (fp32, eager attention) with the adapter applied, or the base model when it is None."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.fspath(model_dir), dtype=torch.float32,
                                                 attn_implementation="eager")
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, os.fspath(adapter_dir))
    return model.eval()


@torch.no_grad()
def oracle_greedy(model: Any, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens by full recomputation, and the logits of the first generated position."""
    ids = list(prompt_ids)
    first: torch.Tensor | None = None
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids])).logits[0, -1].float()
        if first is None:
            first = logits
        nxt = int(logits.argmax())
        out.append(nxt)
        ids.append(nxt)
    assert first is not None
    return out, first


def adapter_dir(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    return d
