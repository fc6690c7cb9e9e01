"""A pure-torch oracle for paged attention, written from the AttentionBackend contract, and a paged-batch builder.

Kept independent of the core's torch-native backend so the kernels are checked against the contract itself.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sgl.core.memory.kv_pool import KVPool
from sgl.core.memory.req_to_token import ReqToTokenPool
from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode


def paged_attention_oracle(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: Sequence[int],
    prefix_lens: Sequence[int],
    extend_lens: Sequence[int],
    scale: float,
) -> torch.Tensor:
    """q [T, H, D] request-major -> [T, H, Dv] in fp32: new token j of request b sees its keys [0, prefix + j]."""
    heads, kv_heads = q.shape[1], k_buffer.shape[1]
    group = heads // kv_heads
    outs, start = [], 0
    for r, p, n in zip(req_pool_indices, prefix_lens, extend_lens):
        slots = req_to_token[r, : p + n].long()
        k = k_buffer[slots].float().repeat_interleave(group, dim=1)  # [S, H, D]
        v = v_buffer[slots].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("nhd,shd->hns", q[start : start + n].float(), k) * scale
        visible = torch.arange(p + n, device=q.device)[None, :] <= (torch.arange(n, device=q.device)[:, None] + p)
        scores = scores.masked_fill(~visible[None], float("-inf"))
        outs.append(torch.einsum("hns,shd->nhd", scores.softmax(-1), v))
        start += n
    return torch.cat(outs)


@dataclass
class Paged:
    """A KV pool and request table with a free list; slot 0 stays the padding sink."""

    kv_pool: KVPool
    req_to_token_pool: ReqToTokenPool
    free: list[int]

    @classmethod
    def make(cls, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
             num_slots: int = 512, num_layers: int = 1, seed: int = 0) -> Paged:
        pool = KVPool(num_slots, 1, num_layers, num_kv_heads, head_dim, dtype, device)
        free = list(range(1, num_slots + 1))
        random.Random(seed).shuffle(free)  # scattered slots, as after a while of serving
        return cls(pool, ReqToTokenPool(8, 256, device), free)

    def fill_prefix(self, req: int, n: int, layer: int = 0) -> None:
        """Gives request slot ``req`` a cached prefix of n random tokens."""
        slots = torch.tensor([self.free.pop() for _ in range(n)], dtype=torch.int64)
        self.req_to_token_pool.write(req, 0, slots)
        dev = self.kv_pool.device
        shape = (n, self.kv_pool.num_kv_heads, self.kv_pool.head_dim)
        self.kv_pool.k_buffer[layer][slots.to(dev)] = torch.randn(shape, device=dev).to(self.kv_pool.dtype)
        self.kv_pool.v_buffer[layer][slots.to(dev)] = torch.randn(shape, device=dev).to(self.kv_pool.dtype)

    def batch(self, reqs: Sequence[int], prefix_lens: Sequence[int], extend_lens: Sequence[int],
              mode: ForwardMode, backend: object) -> ForwardBatch:
        """A ForwardBatch whose new tokens get fresh slots written after each request's prefix."""
        dev = self.kv_pool.device
        locs, positions = [], []
        for r, p, n in zip(reqs, prefix_lens, extend_lens):
            slots = torch.tensor([self.free.pop() for _ in range(n)], dtype=torch.int64)
            self.req_to_token_pool.write(r, p, slots)
            locs.append(slots)
            positions.append(torch.arange(p, p + n))
        seq_lens = [p + n for p, n in zip(prefix_lens, extend_lens)]
        starts = [sum(extend_lens[:i]) for i in range(len(reqs))]
        total = sum(extend_lens)
        decode = mode is ForwardMode.DECODE
        return ForwardBatch(
            forward_mode=mode,
            batch_size=len(reqs),
            input_ids=torch.zeros(total, dtype=torch.int64, device=dev),
            positions=torch.cat(positions).to(dev),
            req_pool_indices=torch.tensor(list(reqs), dtype=torch.int64, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=dev),
            out_cache_loc=torch.cat(locs).to(dev),
            seq_lens_cpu=seq_lens,
            req_to_token_pool=self.req_to_token_pool,
            kv_pool=self.kv_pool,
            attn_backend=backend,  # type: ignore[arg-type]
            extend_prefix_lens=None if decode else torch.tensor(list(prefix_lens), device=dev),
            extend_seq_lens=None if decode else torch.tensor(list(extend_lens), device=dev),
            extend_start_loc=None if decode else torch.tensor(starts, device=dev),
            extend_prefix_lens_cpu=None if decode else list(prefix_lens),
            extend_seq_lens_cpu=None if decode else list(extend_lens),
        )
