"""Test helper (not a test): rewrites a dense Hugging Face checkpoint into a quantized format's real layout, and
the same weights dequantized back into a dense checkpoint (the reference model).

Each format is written here from its own documentation, independently of the plugin that reads it, so a layout the
plugin misreads (a transposed tensor, a wrong scale name, a swapped nibble order) fails the comparison.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

# name -> (checkpoint tensors in the quantized layout, the dense float32 weight they stand for)
Quantizer = Callable[[str, torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


_MIXTRAL_EXPERT = re.compile(r"\.experts\.\d+\.w[123]\.weight$")


def is_linear_weight(name: str) -> bool:
    """A decoder layer's projection (MoE experts' under HF's and Mixtral's names, and DeepSeek's
    ``kv_a_proj_with_mqa`` included), never a router, a norm, the embedding or the head."""
    return name.startswith("model.layers.") and (name.endswith(("_proj.weight", "_proj_with_mqa.weight"))
                                                 or _MIXTRAL_EXPERT.search(name) is not None)


def write_pair(
    src: Path, quantized: Path, dequantized: Path, quantize: Quantizer, quantization_config: dict[str, Any]
) -> tuple[Path, Path]:
    """``quantized``: every linear weight replaced by ``quantize``'s tensors, config.json gains the
    quantization_config; ``dequantized``: the dense checkpoint of exactly the weights the quantized one encodes."""
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    quant: dict[str, torch.Tensor] = {}
    dense: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if is_linear_weight(name):
            parts, deq = quantize(name, t.float())
            quant.update(parts)
            dense[name] = deq.to(torch.float32).contiguous()
        else:
            quant[name] = dense[name] = t
    for out, weights, qc in ((quantized, quant, quantization_config), (dequantized, dense, None)):
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
        config = json.loads((out / "config.json").read_text())
        config.pop("quantization_config", None)
        if qc is not None:
            config["quantization_config"] = qc
        (out / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"))
    return quantized, dequantized
