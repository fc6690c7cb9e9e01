"""Reading a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) and checking it fits the model."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sgl.plugins.lora.targets import Target, projection_of

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
# PEFT options that change the math beyond x A^T B^T * scaling: refused rather than served wrong
_UNSUPPORTED_TRUE = ("use_dora", "fan_in_fan_out")


@dataclass(frozen=True)
class AdapterWeights:
    """One adapter on the host: per HF module name, A [r, in] and B [out, r] with the scaling folded into B."""

    path: str
    rank: int
    scaling: float
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def target_modules(self) -> tuple[str, ...]:
        return tuple(sorted({projection_of(m) for m in self.modules}))


def read_config(path: str) -> dict[str, Any]:
    cfg_path = Path(path) / CONFIG
    if not cfg_path.is_file():
        raise ValueError(f"{path}: no {CONFIG} (a PEFT LoRA adapter directory is expected)")
    cfg: dict[str, Any] = json.loads(cfg_path.read_text())
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ValueError(f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for key in _UNSUPPORTED_TRUE:
        if cfg.get(key):
            raise ValueError(f"{path}: {key} adapters are not supported")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{path}: bias={cfg['bias']!r} is not supported (only 'none')")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise ValueError(f"{path}: per-module ranks or alphas ({key}) are not supported")
    if cfg.get("modules_to_save"):
        raise ValueError(f"{path}: modules_to_save (fully trained layers) is not supported")
    return cfg


def adapter_rank(path: str) -> int:
    return int(read_config(path)["r"])


def load_adapter_weights(
    path: str, targets: dict[str, Target], allowed: tuple[str, ...], max_rank: int, dtype: torch.dtype
) -> AdapterWeights:
    """Reads and checks an adapter: rank <= ``max_rank``, every module an adaptable projection among ``allowed``,
    every shape the base model's. ValueError says which check failed."""
    from safetensors.torch import load_file

    cfg = read_config(path)
    rank = int(cfg["r"])
    if not 1 <= rank <= max_rank:
        raise ValueError(f"{path}: rank {rank} exceeds --max-lora-rank {max_rank}")
    alpha = float(cfg.get("lora_alpha", rank))
    scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    weights_path = Path(path) / WEIGHTS
    if not weights_path.is_file():
        raise ValueError(f"{path}: no {WEIGHTS}")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights_path)).items():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"{path}: tensor {key!r} is not a LoRA A/B matrix of a linear projection")
        pairs.setdefault(m["module"], {})[m["ab"]] = tensor
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, ab in sorted(pairs.items()):
        target = targets.get(module)
        if target is None:
            raise ValueError(f"{path}: target module {module!r} does not exist in the base model (or is not an "
                             "adaptable q/k/v/o/gate/up/down projection)")
        proj = projection_of(module)
        if proj not in allowed:
            raise ValueError(f"{path}: targets {proj}, which --lora-target-modules ({' '.join(allowed)}) leaves out")
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{path}: {module} lacks its lora_{'A' if 'A' not in ab else 'B'} matrix")
        a, b = ab["A"], ab["B"]
        want_a = (rank, target.layer.in_features)
        want_b = (target.out_slice.size, rank)
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            raise ValueError(f"{path}: {module} has A {tuple(a.shape)} and B {tuple(b.shape)}; the base model needs "
                             f"A {want_a} and B {want_b}")
        modules[module] = (a.to(dtype).contiguous(), (b.float() * scaling).to(dtype).contiguous())
    if not modules:
        raise ValueError(f"{path}: the adapter holds no LoRA matrices")
    return AdapterWeights(path, rank, scaling, modules)
