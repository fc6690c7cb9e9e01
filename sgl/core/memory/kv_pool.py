"""The paged KV pool: per-layer K and V buffers indexed by slot."""

from __future__ import annotations

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
