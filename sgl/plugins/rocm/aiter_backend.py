"""AiterAttnBackend: decode through AMD aiter's ragged paged-attention kernel, extend through the portable Triton one.

aiter reads the KV pool in place: a pool buffer ``[slots, KVH, D]`` is aiter's paged cache with one token per page in
its "NHD" layout (``[pages, page_size=1, KVH, D]``), and each request's page list is its row of the request-to-token
table. Only decode is aiter's; extend (prefill) and the K/V store are the Triton backend's, which this extends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from sgl.core.attention.base import AttentionBackend, AttentionLayerInfo
from sgl.kernels import store_kv
from sgl.kernels.attention_backend import TritonAttnBackend
from sgl.plugins.rocm.arch import current_arch, probe_aiter

if TYPE_CHECKING:
    from sgl.core.runner.forward_batch import ForwardBatch

PARTITION_SIZE = 256
"""Keys per partition of aiter's split-K decode (its default); the workspace holds one partial per partition."""


class RaggedKV(NamedTuple):
    """aiter's ragged page table for page size 1: request b's KV slots are ``indices[indptr[b]:indptr[b+1]]``."""

    indptr: torch.Tensor  # [B + 1] int32
    indices: torch.Tensor  # [sum(seq_lens)] int32
    last_page_lens: torch.Tensor  # [B] int32, all 1: every page holds one token


def ragged_kv(
    req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, max_len: int
) -> RaggedKV:
    """The page table of a decode batch, from the request-to-token table (no host sync but ``max_len``)."""
    lens = seq_lens.to(torch.int32)
    indptr = torch.zeros(lens.shape[0] + 1, dtype=torch.int32, device=lens.device)
    torch.cumsum(lens, 0, out=indptr[1:])
    rows = req_to_token[req_pool_indices.long(), :max_len]
    live = torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]
    indices = rows[live].to(torch.int32)
    return RaggedKV(indptr, indices, torch.ones_like(lens))


def workspace_bytes(batch: int, heads: int, head_dim: int, max_len: int) -> int:
    """fp32 partial outputs plus a max and a sum per (request, head, partition)."""
    parts = -(-max_len // PARTITION_SIZE)
    return 4 * batch * heads * parts * (head_dim + 2)


class AiterAttnBackend(TritonAttnBackend):
    """Needs AMD's aiter on a GPU it supports; refuses at startup, with the way out, anywhere else."""

    # NOTE: no decode graphs: the page table's length changes every step, so it cannot sit in a captured buffer.
    init_graph_state = AttentionBackend.init_graph_state  # type: ignore[assignment]
    init_metadata_capture = AttentionBackend.init_metadata_capture  # type: ignore[assignment]
    init_metadata_replay = AttentionBackend.init_metadata_replay  # type: ignore[assignment]

    def __init__(self, runner: Any = None) -> None:
        probe = probe_aiter(current_arch())
        if not probe.usable:
            raise ValueError(f"--attention-backend aiter cannot run: {probe.why}; use --attention-backend triton")
        import aiter

        self._aiter = aiter
        self._workspace: torch.Tensor | None = None
        self._unit_scale: torch.Tensor | None = None
        super().__init__(runner)

    def _scratch_for(self, nbytes: int, device: torch.device) -> torch.Tensor:
        if self._workspace is None or self._workspace.numel() < nbytes:
            self._workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return self._workspace

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
        k_buf, v_buf = fb.kv_pool.get_key_buffer(layer.layer_id), fb.kv_pool.get_value_buffer(layer.layer_id)
        if save_kv_cache:
            store_kv(k_buf, v_buf, fb.out_cache_loc, k, v)
        batch = fb.seq_lens.shape[0]
        max_len = max(fb.seq_lens_cpu, default=1)
        table = ragged_kv(fb.req_to_token_pool.req_to_token, fb.req_pool_indices, fb.seq_lens, max_len)
        qh = q.view(batch, layer.num_heads, layer.head_dim)
        out = torch.empty(batch, layer.num_heads, v_buf.shape[2], dtype=q.dtype, device=q.device)
        if self._unit_scale is None:
            self._unit_scale = torch.ones(1, dtype=torch.float32, device=q.device)
        workspace = self._scratch_for(workspace_bytes(batch, layer.num_heads, layer.head_dim, max_len), q.device)
        self._aiter.paged_attention_ragged(
            out, workspace, qh,
            k_buf.unsqueeze(1), v_buf.unsqueeze(1),  # [slots, page 1, KVH, D]: the "NHD" paged layout
            layer.scaling, table.indptr, table.indices, table.last_page_lens,
            1, -(-max_len // PARTITION_SIZE), None,
            "fp8" if k_buf.element_size() == 1 else "auto", "NHD", 0.0,
            self._unit_scale, self._unit_scale,  # NOTE: sgl's fp8 KV cache is unscaled (scale 1.0)
            None, PARTITION_SIZE,
        )
        return out.view(batch, -1)
