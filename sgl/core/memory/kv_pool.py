"""The paged KV pool: per-layer K and V buffers indexed by slot."""

from __future__ import annotations

import torch


class KVPool:
    """Per-layer buffers ``[size + page_size, kv_heads, head_dim]``.

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
        self.k_buffer[layer_id][loc] = k.view(-1, self.num_kv_heads, self.head_dim).to(self.dtype)
        self.v_buffer[layer_id][loc] = v.view(-1, self.num_kv_heads, self.v_head_dim).to(self.dtype)
