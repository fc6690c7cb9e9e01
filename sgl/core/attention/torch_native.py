"""The reference paged attention backend: gather each request's KV slots and run torch's SDPA per request.

It is the CPU path and the oracle for the fast backends, so it favours obvious correctness over speed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from sgl.core.attention.base import AttentionBackend, AttentionLayerInfo, KVStoreTarget, pool_store_target

if TYPE_CHECKING:
    from sgl.core.runner.forward_batch import ForwardBatch


class TorchNativeAttnBackend(AttentionBackend):
    """Stateless over steps: everything it reads is in the ForwardBatch, so ``runner`` may be None."""

    def __init__(self, runner: Any = None) -> None:
        self.runner = runner

    def kv_store_target(self, layer: AttentionLayerInfo, forward_batch: ForwardBatch) -> KVStoreTarget | None:
        return pool_store_target(layer, forward_batch)

    def _save(self, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> None:
        fb.kv_pool.set_kv_buffer(layer.layer_id, fb.out_cache_loc, k, v)

    def _attend(
        self, q: torch.Tensor, slots: torch.Tensor, prefix_len: int, layer: AttentionLayerInfo, fb: ForwardBatch,
        tree: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q [n, H, D] of the last n of len(slots) tokens -> [n, H, Dv]; token j sees keys [0, prefix_len + j], or with
        ``tree`` ([n, n] bool) the prefix and the new tokens ``tree[j]`` allows."""
        n, s = q.shape[0], slots.shape[0]
        # NOTE: the pool may store narrower than q (an fp8 KV cache): upcast on read, attend in q's dtype.
        k = fb.kv_pool.get_key_buffer(layer.layer_id)[slots].to(q.dtype)  # [s, KVH, D]
        v = fb.kv_pool.get_value_buffer(layer.layer_id)[slots].to(q.dtype)
        group = layer.num_heads // layer.num_kv_heads
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        mask = None
        if tree is not None:
            seen = torch.ones(n, prefix_len, dtype=torch.bool, device=q.device)
            mask = torch.cat([seen, tree.to(device=q.device, dtype=torch.bool)], dim=1)
        elif n > 1:
            # NOTE: causal with the diagonal shifted by the cached prefix (SDPA's is_causal aligns top-left).
            rows = torch.arange(n, device=q.device).unsqueeze(1) + prefix_len
            mask = torch.arange(s, device=q.device).unsqueeze(0) <= rows
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=layer.scaling
        )
        return out.transpose(0, 1)

    def _heads(self, q: torch.Tensor, layer: AttentionLayerInfo) -> tuple[torch.Tensor, torch.Tensor, int]:
        v_dim = int(getattr(layer, "v_head_dim", layer.head_dim))
        qh = q.view(-1, layer.num_heads, layer.head_dim)
        return qh, q.new_empty(qh.shape[0], layer.num_heads, v_dim), v_dim

    def forward_extend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: AttentionLayerInfo,
        forward_batch: ForwardBatch,
        save_kv_cache: bool = True,
    ) -> torch.Tensor:
        fb = forward_batch
        if save_kv_cache:
            self._save(k, v, layer, fb)
        qh, out, v_dim = self._heads(q, layer)
        seq_lens = fb.seq_lens_cpu
        ext_lens = fb.extend_seq_lens_cpu
        if ext_lens is None:
            if fb.extend_seq_lens is None:
                raise ValueError("an extend batch needs extend_seq_lens")
            ext_lens = fb.extend_seq_lens.tolist()
        req_to_token = fb.req_to_token_pool.req_to_token
        start = 0
        for i in range(fb.batch_size):
            n, s = ext_lens[i], seq_lens[i]
            if n:
                slots = req_to_token[fb.req_pool_indices[i], :s].long()
                tree = fb.tree_masks[i] if fb.tree_masks is not None else None
                out[start : start + n] = self._attend(qh[start : start + n], slots, s - n, layer, fb, tree)
            start += n
        return out.view(-1, layer.num_heads * v_dim)

    def forward_decode(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: AttentionLayerInfo,
        forward_batch: ForwardBatch,
        save_kv_cache: bool = True,
    ) -> torch.Tensor:
        fb = forward_batch
        if save_kv_cache:
            self._save(k, v, layer, fb)
        qh, out, v_dim = self._heads(q, layer)
        req_to_token = fb.req_to_token_pool.req_to_token
        for i in range(fb.batch_size):
            s = fb.seq_lens_cpu[i]
            slots = req_to_token[fb.req_pool_indices[i], :s].long()
            out[i : i + 1] = self._attend(qh[i : i + 1], slots, s - 1, layer, fb)
        return out.view(-1, layer.num_heads * v_dim)
