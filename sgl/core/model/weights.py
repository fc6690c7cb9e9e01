"""Reading checkpoint tensors and routing them to parameters: the part of loading every architecture shares."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# NOTE: buffers some HF checkpoints carry that the engine recomputes (rope tables); never weights.
IGNORED_SUFFIXES: tuple[str, ...] = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


class StackedParam(NamedTuple):
    """Checkpoint tensors ``*{source}*`` load into the fused parameter ``*{target}*`` as shard ``shard_id``."""

    target: str  # e.g. ".qkv_proj"
    source: str  # e.g. ".q_proj"
    shard_id: Any  # "q" / "k" / "v", or an index into a merged layer's output sizes


def safetensors_files(model_path: str) -> list[str]:
    """The checkpoint's files: the shards an index names (in order), else the single file, else every *.safetensors."""
    index = os.path.join(model_path, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map", {})
        files = sorted(set(weight_map.values()))
        missing = [name for name in files if not os.path.isfile(os.path.join(model_path, name))]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) that do not exist: {', '.join(missing)}")
        return [os.path.join(model_path, name) for name in files]
    single = os.path.join(model_path, SINGLE_FILE)
    if os.path.isfile(single):
        return [single]
    return sorted(os.path.join(model_path, n) for n in os.listdir(model_path) if n.endswith(".safetensors"))


def iter_safetensors(files: Sequence[str], progress: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, cpu tensor) over every file, with a progress bar in bytes read.

    NOTE: the bar follows the log level (hidden below INFO, as with ``--log-level warning``), so a quiet server stays
    quiet.
    """
    from safetensors import safe_open
    from tqdm import tqdm

    sizes = [os.path.getsize(path) for path in files]
    bar = tqdm(total=sum(sizes), desc=f"loading weights ({len(files)} file{'s' if len(files) != 1 else ''})",
               unit="B", unit_scale=True, unit_divisor=1024,
               disable=not progress or not logger.isEnabledFor(logging.INFO))
    try:
        for path, size in zip(files, sizes):
            read = 0
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensor = f.get_tensor(name)
                    yield name, tensor
                    n = tensor.numel() * tensor.element_size()
                    read += n
                    bar.update(n)
            bar.update(size - read)  # the file's header: the bar ends at exactly 100%
    finally:
        bar.close()


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
    if param.shape != loaded_weight.shape:
        raise ValueError(f"shape mismatch: checkpoint {tuple(loaded_weight.shape)} vs parameter {tuple(param.shape)}")
    param.data.copy_(loaded_weight)


def load_stacked_weights(
    module: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    stacked: Sequence[StackedParam] = (),
    skip: Iterable[str] = (),
) -> set[str]:
    """Routes each checkpoint tensor to its parameter's ``weight_loader``; returns the parameter names loaded.

    NOTE: a fused parameter counts as loaded only once every one of its shards arrived; a partial one is an error
    naming the checkpoint tensors that were absent. Unexpected names are an error too, naming the tensor.
    """
    params = dict(module.named_parameters())
    skip = set(skip)
    got: dict[str, tuple[str, set[Any]]] = {}  # fused parameter -> (its stacked target suffix, shards seen)
    loaded: set[str] = set()
    for name, tensor in weights:
        if name.endswith(IGNORED_SUFFIXES) or name in skip:
            continue
        sp = next((sp for sp in stacked if sp.source in name), None)
        if sp is not None and (target := name.replace(sp.source, sp.target)) in params:
            _load_one(params[target], tensor, sp.shard_id, name)
            got.setdefault(target, (sp.target, set()))[1].add(sp.shard_id)
            continue
        if name not in params:
            raise ValueError(f"unexpected tensor {name!r} in the checkpoint: the model has no such parameter")
        _load_one(params[name], tensor, None, name)
        loaded.add(name)
    for target, (kind, shards) in got.items():
        absent = [sp for sp in stacked if sp.target == kind and sp.shard_id not in shards]
        if absent:
            names = ", ".join(target.replace(kind, sp.source) for sp in absent)
            raise ValueError(f"missing tensor(s) {names} in the checkpoint (needed for {target})")
        loaded.add(target)
    return loaded


def _load_one(param: nn.Parameter, tensor: torch.Tensor, shard_id: Any, name: str) -> None:
    loader = getattr(param, "weight_loader", default_weight_loader)
    try:
        loader(param, tensor, shard_id) if shard_id is not None else loader(param, tensor)
    except ValueError as exc:
        raise ValueError(f"tensor {name!r}: {exc}") from exc


def expected_checkpoint_names(param_name: str, stacked: Sequence[StackedParam]) -> list[str]:
    """The checkpoint tensors a parameter is loaded from (several for a fused one)."""
    names = [param_name.replace(sp.target, sp.source) for sp in stacked if sp.target in param_name]
    return names or [param_name]
