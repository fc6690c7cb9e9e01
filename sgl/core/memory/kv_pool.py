"""The paged KV pool: per-layer K and V buffers indexed by slot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

FP8_KV_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2)


def to_kv_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x as stored in a KV buffer of ``dtype``: the one place that knows the cast (fp8 is unscaled, scale 1.0).

    NOTE: fp8 saturates: x is clamped to the dtype's finite range (e4m3 +-448, e4m3fnuz +-240, e5m2 +-57344) before
    the cast. torch's own cast overflows (e5m2 to inf; e4m3 to NaN in older releases), and one such value in a slot
    would poison every attention output that reads it. The Triton store kernel clamps to the same bound.
    """
    if dtype in FP8_KV_DTYPES and x.dtype != dtype:
        bound = torch.finfo(dtype).max
        x = x.clamp(-bound, bound)
    return x.to(dtype)


class KVPool:
    """Per-layer buffers ``[size + page_size, kv_heads, head_dim]`` of ``dtype``, which may be narrower than the
    activations (fp8): readers upcast what they load to their compute dtype.

    NOTE: slots ``[0, page_size)`` are never handed out: slot 0 is the padding sink that padded tokens write to, so
    usable slots are ``[page_size, size + page_size)``.
    """

    latent = False  # MLA's pool (MLAKVPool) stores one latent buffer per layer and no separate values

    def __init__(
        self,
        size: int,
        page_size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        v_head_dim: int | None = None,
    ) -> None:
        if size % page_size:
            raise ValueError(f"KV pool size {size} is not a multiple of page size {page_size}")
        self.size = size
        self.page_size = page_size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.v_head_dim = v_head_dim or head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        rows = size + page_size
        self.k_buffer = [torch.zeros((rows, num_kv_heads, head_dim), dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffer = [
            torch.zeros((rows, num_kv_heads, self.v_head_dim), dtype=dtype, device=device) for _ in range(num_layers)
        ]

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def get_key_buffer(self, layer_id: int) -> torch.Tensor:
        return self.k_buffer[layer_id]

    def get_value_buffer(self, layer_id: int) -> torch.Tensor:
        return self.v_buffer[layer_id]

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Writes k, v ([T, KVH*D] or [T, KVH, D]) at slots ``loc`` [T]."""
        self.k_buffer[layer_id][loc] = to_kv_dtype(k.view(-1, self.num_kv_heads, self.head_dim), self.dtype)
        self.v_buffer[layer_id][loc] = to_kv_dtype(v.view(-1, self.num_kv_heads, self.v_head_dim), self.dtype)


class MLAKVPool(KVPool):
    """Multi-head latent attention's cache: per layer one buffer ``[size + page_size, 1, kv_lora_rank + rope_dim]``
    holding each token's normalised latent and its rotated rope key, read as one key "head" by every query head.

    NOTE: the value is not stored twice: ``v_buffer[layer]`` is a view of the key buffer's first ``v_head_dim``
    (= kv_lora_rank) features, so ``set_kv_buffer`` writes k only and a backend reading v reads the latent.
    """

    latent = True

    def __init__(
        self, size: int, page_size: int, num_layers: int, latent_dim: int, v_head_dim: int, dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        if v_head_dim > latent_dim:
            raise ValueError(f"MLA value width {v_head_dim} exceeds the latent width {latent_dim}")
        super().__init__(size, page_size, 0, 1, latent_dim, dtype, device, v_head_dim)
        self.num_layers = num_layers
        rows = size + page_size
        self.k_buffer = [torch.zeros((rows, 1, latent_dim), dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffer = [k[..., :v_head_dim] for k in self.k_buffer]

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Writes the latent k ([T, latent_dim]) at ``loc``; v, a view of k's first features, is not stored again."""
        self.k_buffer[layer_id][loc] = to_kv_dtype(k.view(-1, 1, self.head_dim), self.dtype)


@dataclass(frozen=True)
class KVLayout:
    """What one token's cache holds in each layer on this rank: the model says (``kv_layout``), the pool follows."""

    num_kv_heads: int
    head_dim: int
    v_head_dim: int
    latent: bool = False  # MLA: one buffer of head_dim features; the value is its first v_head_dim

    def bytes_per_token(self, num_layers: int, dtype: torch.dtype) -> int:
        width = self.head_dim if self.latent else self.head_dim + self.v_head_dim
        return num_layers * self.num_kv_heads * width * torch.empty((), dtype=dtype).element_size()

    def make_pool(
        self, size: int, page_size: int, num_layers: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> KVPool:
        if self.latent:
            return MLAKVPool(size, page_size, num_layers, self.head_dim, self.v_head_dim, dtype, device)
        return KVPool(size, page_size, num_layers, self.num_kv_heads, self.head_dim, dtype, device, self.v_head_dim)


def model_kv_layout(model: Any, num_kv_heads: int, head_dim: int) -> KVLayout:
    """The model's own layout when it declares one (``kv_layout()``, MLA does), else standard heads of the config."""
    declared = getattr(model, "kv_layout", None)
    return declared() if callable(declared) else KVLayout(num_kv_heads, head_dim, head_dim)
