"""ModelConfig: a model directory's config.json (+ generation_config.json), read without transformers.

The core must not depend on transformers, so this reads the JSON itself and normalises the few keys whose names
moved between transformers versions (``rope_scaling`` / ``rope_parameters``, ``torch_dtype`` / ``dtype``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


class ModelConfig:
    """Typed view of a Hugging Face config; every raw key stays reachable through ``hf`` and ``get``."""

    def __init__(self, hf: Mapping[str, Any], generation: Mapping[str, Any] | None = None, path: str | None = None):
        self.hf: dict[str, Any] = dict(hf)
        self.generation: dict[str, Any] = dict(generation or {})
        self.path = path
        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
            if key not in self.hf:
                where = f" in {path}" if path else ""
                raise ValueError(f"model config{where} has no {key!r}")

    # construction -----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], generation: Mapping[str, Any] | None = None) -> ModelConfig:
        return cls(d, generation)

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> ModelConfig:
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model directory {path!r} does not exist")
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"model directory {path!r} has no config.json")
        try:
            with open(config_file) as f:
                hf = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file!r} is not valid JSON: {exc}") from exc
        if not isinstance(hf, dict):
            raise ValueError(f"{config_file!r} does not hold a JSON object")  # noqa: TRY004
        generation: dict[str, Any] = {}
        gen_file = os.path.join(path, "generation_config.json")
        if os.path.isfile(gen_file):
            with open(gen_file) as f:
                loaded = json.load(f)
            generation = loaded if isinstance(loaded, dict) else {}
        return cls(hf, generation, path)

    # raw access -------------------------------------------------------------------------------------------------
    def get(self, name: str, default: Any = None) -> Any:
        value = self.hf.get(name, default)
        return default if value is None else value

    def __getattr__(self, name: str) -> Any:
        # NOTE: only reached for names that are not real attributes, so typed properties win over raw keys.
        hf = self.__dict__.get("hf")
        if hf is not None and name in hf:
            return hf[name]
        raise AttributeError(f"model config has no attribute or key {name!r}")

    def __repr__(self) -> str:
        return f"ModelConfig({self.architecture}, layers={self.num_layers}, hidden={self.hidden_size}, path={self.path!r})"

    # typed properties -------------------------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        archs = self.hf.get("architectures") or []
        if not archs:
            raise ValueError(f"model config {self.path or ''} names no architecture ('architectures' is empty)")
        return str(archs[0])

    @property
    def model_type(self) -> str:
        return str(self.get("model_type", ""))

    @property
    def vocab_size(self) -> int:
        return int(self.hf["vocab_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.hf["hidden_size"])

    @property
    def num_layers(self) -> int:
        return int(self.hf["num_hidden_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.hf["num_attention_heads"])

    @property
    def num_kv_heads(self) -> int:
        return int(self.get("num_key_value_heads", self.num_heads))

    @property
    def head_dim(self) -> int:
        return int(self.get("head_dim", self.hidden_size // self.num_heads))

    @property
    def intermediate_size(self) -> int:
        return int(self.hf["intermediate_size"])

    @property
    def rms_norm_eps(self) -> float:
        return float(self.get("rms_norm_eps", 1e-6))

    @property
    def _rope_dict(self) -> dict[str, Any] | None:
        d = self.hf.get("rope_scaling") or self.hf.get("rope_parameters")
        return dict(d) if isinstance(d, Mapping) else None

    @property
    def rope_theta(self) -> float:
        if self.hf.get("rope_theta") is not None:
            return float(self.hf["rope_theta"])
        rope = self._rope_dict or {}
        return float(rope.get("rope_theta", 10000.0))

    @property
    def rope_scaling(self) -> dict[str, Any] | None:
        """The scaling parameters, or None for plain rope (newer transformers store those as rope_type 'default')."""
        rope = self._rope_dict
        if rope is None:
            return None
        kind = rope.get("rope_type", rope.get("type", "default"))
        return None if kind == "default" else rope

    @property
    def partial_rotary_factor(self) -> float:
        rope = self._rope_dict or {}
        return float(self.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0)))

    @property
    def max_position_embeddings(self) -> int:
        """The context length."""
        return int(self.get("max_position_embeddings", 2048))

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.get("tie_word_embeddings", False))

    @property
    def torch_dtype(self) -> torch.dtype | None:
        name = self.hf.get("torch_dtype") or self.hf.get("dtype")
        if name is None:
            return None
        name = str(name).removeprefix("torch.")
        if name not in _DTYPES:
            raise ValueError(f"model config dtype {name!r} is not one of {', '.join(_DTYPES)}")
        return _DTYPES[name]

    @property
    def eos_token_ids(self) -> list[int]:
        ids = _as_id_list(self.hf.get("eos_token_id")) + _as_id_list(self.generation.get("eos_token_id"))
        return list(dict.fromkeys(ids))  # config.json's first, order kept, duplicates dropped

    @property
    def bos_token_id(self) -> int | None:
        value = self.hf.get("bos_token_id", self.generation.get("bos_token_id"))
        return None if value is None else int(value)
