"""The attention-backend contract: paged attention over the KV pool, for extend and decode."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

import torch

from sgl.core.attention.store_target import KVStoreTarget

if TYPE_CHECKING:
    from sgl.core.runner.forward_batch import ForwardBatch


class AttentionLayerInfo(Protocol):
    """What a backend may read of the attention layer calling it."""

    layer_id: int
    num_heads: int  # query heads on this rank
    num_kv_heads: int  # kv heads on this rank
    head_dim: int
    scaling: float


def pool_store_target(layer: AttentionLayerInfo, forward_batch: ForwardBatch) -> KVStoreTarget | None:
    """The answer of a backend that stores into the plain KVPool at ``out_cache_loc`` (MLA's latent pool: None)."""
    pool = forward_batch.kv_pool
    if getattr(pool, "latent", False):
        return None
    k_buf, v_buf = pool.get_key_buffer(layer.layer_id), pool.get_value_buffer(layer.layer_id)
    return KVStoreTarget(k_buf, v_buf, forward_batch.out_cache_loc)


class AttentionBackend(ABC):
    """One instance per ModelRunner. q is [T, H*D], k and v are [T, KVH*D]; the result is [T, H*D].

    NOTE: the backend writes the new k, v into the KV pool at ``forward_batch.out_cache_loc`` before attending, so
    every token attends to its own key; unless the caller passes ``save_kv_cache=False``, which it may only after
    writing them itself into the ``kv_store_target`` this backend handed out (a fused prologue kernel).
    """

    def kv_store_target(self, layer: AttentionLayerInfo, forward_batch: ForwardBatch) -> KVStoreTarget | None:
        """The buffers and slots a caller may store this forward's K/V into itself (then ``save_kv_cache=False``),
        exactly as this backend would store them (``KVPool.set_kv_buffer``'s cast). None, the default: the backend
        stores them, as a backend whose cache layout is not the KVPool's plain one must."""
        return None

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Called once per forward, before the first layer."""
        return

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: AttentionLayerInfo,
        forward_batch: ForwardBatch,
        save_kv_cache: bool = True,
    ) -> torch.Tensor:
        if forward_batch.forward_mode.is_decode:
            return self.forward_decode(q, k, v, layer, forward_batch, save_kv_cache)
        return self.forward_extend(q, k, v, layer, forward_batch, save_kv_cache)

    @abstractmethod
    def forward_extend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: AttentionLayerInfo,
        forward_batch: ForwardBatch,
        save_kv_cache: bool = True,
    ) -> torch.Tensor: ...

    @abstractmethod
    def forward_decode(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: AttentionLayerInfo,
        forward_batch: ForwardBatch,
        save_kv_cache: bool = True,
    ) -> torch.Tensor: ...

    # graph capture (decode): backends that support it override all three -------------------------------------
    def init_graph_state(self, max_bs: int, max_context_len: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support graph capture")

    def init_metadata_capture(self, bs: int, forward_batch: ForwardBatch) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support graph capture")

    def init_metadata_replay(self, bs: int, forward_batch: ForwardBatch) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support graph capture")

    # graph capture (speculative verify): backends that support it override both ------------------------------
    def init_verify_metadata_capture(self, bs: int, tokens_per_request: int, forward_batch: ForwardBatch) -> None:
        """A TARGET_VERIFY batch of ``bs`` requests with ``tokens_per_request`` rows each (request i's at
        ``i * tokens_per_request``, the first ``extend_seq_lens[i]`` of them real), over static buffers that each
        replay rewrites in place. Rows past a request's extend length must come out finite (they are discarded)."""
        raise NotImplementedError(f"{type(self).__name__} does not support verify graphs")

    def init_verify_metadata_replay(self, bs: int, tokens_per_request: int, forward_batch: ForwardBatch) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support verify graphs")
