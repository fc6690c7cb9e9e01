"""Which of a model's linear layers an adapter can reach, and under which Hugging Face projection names.

A checkpoint names projections (``q_proj``, ``gate_proj``); the model may fuse them (``qkv_proj``, ``gate_up_proj``).
The model's own ``stacked_params_mapping`` (the table its weight loader uses) says which fused layer holds which
projection as which output slice, so every architecture that loads HF weights is covered without a table here.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from sgl.core.model.linear import LinearBase, OutputSlice

SUPPORTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_LAYER = re.compile(r"(^|\.)layers\.\d+\.")


class Target(NamedTuple):
    """One adaptable projection: the layer that computes it and its slice of that layer's output."""

    layer_name: str  # the module name in the model (model.layers.0.self_attn.qkv_proj)
    layer: LinearBase
    slice_index: int  # which of layer.output_slices()
    out_slice: OutputSlice


def projection_targets(model: Any) -> dict[str, Target]:
    """{HF module name (model.layers.0.self_attn.q_proj): Target} for every supported projection of the model."""
    mapping = [(m.target.strip("."), m.source.strip("."), m.shard_id)
               for m in getattr(model, "stacked_params_mapping", ())]
    out: dict[str, Target] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LinearBase) or not _LAYER.search(name):
            continue
        parent, _, leaf = name.rpartition(".")
        slices = module.output_slices()
        fused = [(src, sid) for tgt, src, sid in mapping if tgt == leaf]
        if fused:
            for src, sid in fused:
                index = next(i for i, s in enumerate(slices) if s.shard_id == sid)
                out[f"{parent}.{src}"] = Target(name, module, index, slices[index])
        elif leaf in SUPPORTED and len(slices) == 1:
            out[name] = Target(name, module, 0, slices[0])
    return out


def projection_of(module_name: str) -> str:
    """``model.layers.0.self_attn.q_proj`` -> ``q_proj``."""
    return module_name.rpartition(".")[2]


def resolve_target_modules(flag: tuple[str, ...] | None, from_adapters: set[str]) -> tuple[str, ...]:
    """--lora-target-modules as the projections to adapt: the flag (``all`` = every supported one), else those the
    startup adapters target, else all. ValueError names an unknown projection."""
    if flag:
        wanted = set(SUPPORTED) if "all" in flag else set(flag)
    else:
        wanted = from_adapters or set(SUPPORTED)
    unknown = sorted(wanted - set(SUPPORTED))
    if unknown:
        raise ValueError(f"--lora-target-modules: unknown projection(s) {', '.join(unknown)}; "
                         f"supported: {', '.join(SUPPORTED)}, all")
    return tuple(p for p in SUPPORTED if p in wanted)
