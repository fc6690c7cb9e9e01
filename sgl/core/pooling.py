"""Embedding models: how the prompt's hidden states become one vector, as the checkpoint says.

sentence-transformers checkpoints name a Pooling module in ``modules.json`` (usually ``1_Pooling/config.json``) with
``pooling_mode_mean_tokens`` or ``pooling_mode_lasttoken``; a checkpoint without one is pooled at its last token (what
decoder-only embedding models such as Qwen3-Embedding do, and SGLang's default). The vector is L2-normalized.
"""

from __future__ import annotations

import json
from pathlib import Path

POOLING_TYPE = "sentence_transformers.models.Pooling"


def _pooling_config(model_dir: Path) -> dict[str, object] | None:
    modules = model_dir / "modules.json"
    paths = ["1_Pooling"]
    if modules.is_file():
        paths = [m.get("path", "") for m in json.loads(modules.read_text()) if m.get("type") == POOLING_TYPE]
    for p in paths:
        cfg = model_dir / p / "config.json"
        if cfg.is_file():
            return dict(json.loads(cfg.read_text()))
    return None


def pooling_method(model_dir: str) -> str:
    """"mean" or "last"; ValueError (one line) for a pooling mode sgl does not implement."""
    cfg = _pooling_config(Path(model_dir))
    if cfg is None or cfg.get("pooling_mode_lasttoken"):
        return "last"
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode_") and v)
    raise ValueError(f"--is-embedding: the checkpoint's pooling ({', '.join(modes) or 'none'}) is not supported; "
                     "sgl pools by mean or last token")
