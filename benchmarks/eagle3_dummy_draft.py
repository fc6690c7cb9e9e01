"""An EAGLE-3 draft for any target config, as a config alone (the public ``LlamaForCausalLMEagle3`` layout), loaded
with ``--load-format dummy``: what the replay benchmark pays for per draft forward, without a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DRAFT_VOCAB = 32000  # the published Llama-3.1-8B EAGLE-3 head drafts over 32k of the target's 128k tokens
COPIED = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
          "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "vocab_size", "bos_token_id",
          "eos_token_id", "torch_dtype")


def eagle3_config(target: dict[str, Any]) -> dict[str, Any]:
    """One decoder layer of the target's width, its own LM head over ``DRAFT_VOCAB`` tokens (or the whole vocabulary
    when smaller); the layers it reads are SGLang's default (2, n // 2, n - 3)."""
    return {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "num_hidden_layers": 1,
            "tie_word_embeddings": False, **{k: target[k] for k in COPIED if k in target},
            "draft_vocab_size": min(DRAFT_VOCAB, int(target["vocab_size"]))}


def write_eagle3_draft_config(target_dir: str | Path, out: Path) -> Path:
    target = json.loads((Path(target_dir) / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(eagle3_config(target), indent=2))
    return out
