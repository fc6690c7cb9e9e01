"""TritonAttnBackend: paged attention over the KV pool with the portable Triton kernels of ``sgl.kernels``, shared
by every platform that has Triton.

Per forward, ``init_forward_metadata`` derives what every layer's kernels share (extend offsets, per-request KV
splits); per layer, the backend stores the new K/V with ``store_kv`` and runs one extend or one decode kernel pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sgl.core.attention.base import AttentionBackend, AttentionLayerInfo, KVStoreTarget, pool_store_target
from sgl.core.runner.forward_batch import ForwardMode
from sgl.kernels import (
    DecodeWorkspace,
    decode_attention,
    extend_attention,
    kv_splits_per_request,
    max_kv_splits_for,
    store_kv,
)
from sgl.kernels.decode_attn import merge_tickets
from sgl.kernels.extend_attn import pack_tree_masks

if TYPE_CHECKING:
    from sgl.core.runner.forward_batch import ForwardBatch

# NOTE: the largest split count any batch size uses; graph scratch is sized with it so every captured size fits.
MAX_KV_SPLITS = 16


@dataclass
class ExtendMetadata:
    prefix_lens: torch.Tensor  # [B]
    extend_lens: torch.Tensor  # [B]
    extend_start_loc: torch.Tensor  # [B]
    max_extend_len: int  # host int: sizes the grid
    tree: tuple[torch.Tensor, torch.Tensor] | None = None  # tree verification's masks (pack_tree_masks)
    # NOTE: a captured verify batch has spare rows past a request's extend length, which the kernel never writes:
    # they start at zero rather than at whatever the graph pool held (a NaN there would reach the padding sink's KV)
    zero_fill: bool = False
    # A MIXED batch's trailing one-token requests (the running decodes) go through the decode kernel: the extend
    # kernel would give each a BLOCK_M-row query tile with one live row and read its KV once per query head
    decode_tail: DecodeTail | None = None


@dataclass
class DecodeTail:
    first: int  # index of the first request of the tail; its query rows are the batch's last ``count``
    count: int
    decode: DecodeMetadata


@dataclass
class DecodeMetadata:
    num_kv_splits: torch.Tensor  # [B] int32
    max_kv_splits: int
    graph: bool = False  # scratch must come from the fixed graph buffer
    workspace: DecodeWorkspace | None = None  # carved by the first layer, reused by the rest of the forward


class _Scratch:
    """A flat fp32 buffer the decode partials are carved from; shared by all layers and forwards on one stream.

    NOTE: a fixed scratch (graphs) never reallocates, since captured graphs hold its address; a growable one may.
    """

    def __init__(self, fixed: bool, reserve_batch: int = 0) -> None:
        self.fixed = fixed
        self.reserve_batch = reserve_batch  # a fixed scratch is sized for this batch at MAX_KV_SPLITS on first use
        self.buf: torch.Tensor | None = None

    def carve(
        self, batch: int, heads: int, splits: int, v_dim: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_o, n_lse = batch * heads * splits * v_dim, batch * heads * splits
        need = n_o + n_lse
        if self.buf is None or self.buf.numel() < need:
            if self.fixed and self.buf is not None:
                raise RuntimeError(f"graph scratch holds {self.buf.numel()} floats, a captured batch needs {need}")
            reserve = self.reserve_batch * heads * MAX_KV_SPLITS * (v_dim + 1) if self.fixed else 0
            self.buf = torch.empty(max(need, reserve), dtype=torch.float32, device=device)
        po = self.buf[:n_o].view(batch, heads, splits, v_dim)
        plse = self.buf[n_o:need].view(batch, heads, splits)
        return po, plse


def check_kv_dtype(runner: Any) -> None:
    """Fails at startup, with the way out, where the kernels could not compile for the runner's KV cache dtype.

    NOTE: a platform's ``fp8`` capability promises that its Triton compiles e4m3 (on NVIDIA, Triton has no fp8e4nv
    before compute capability 8.9, exactly where the CUDA platform reports no fp8); fp8_e5m2 compiles everywhere.
    Any other KV dtype needs nothing: the kernels upcast what they load to q's dtype.
    """
    pool, platform = getattr(runner, "kv_pool", None), getattr(runner, "platform", None)
    e4m3 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)  # NOTE: fnuz is AMD MI300's e4m3 (Platform.fp8_dtype)
    if pool is None or platform is None or pool.dtype not in e4m3 or platform.capabilities.fp8:
        return
    raise ValueError(
        "kv_cache_dtype fp8_e4m3 needs a device with fp8 support (NVIDIA: compute capability 8.9+) for the "
        "triton attention backend; use --kv-cache-dtype fp8_e5m2 or --attention-backend torch_native"
    )


def _pack_tree_rows(bits: torch.Tensor, masks: list[torch.Tensor | None], n: int) -> None:
    """Request i's ``[k, k]`` mask (k <= n) into ``bits[i * n * n :]``, in place, in one copy."""
    host = torch.zeros(len(masks), n * n, dtype=torch.int8)
    for i, m in enumerate(masks):
        if m is None:
            raise ValueError("a verify graph's tree batch needs a mask for every request")
        host[i, : m.numel()] = m.reshape(-1).to(torch.int8)
    bits[: host.numel()].copy_(host.view(-1))


class TritonAttnBackend(AttentionBackend):
    """Same outputs as the torch-native backend; everything per step comes from the ForwardBatch."""

    def __init__(self, runner: Any = None) -> None:
        check_kv_dtype(runner)
        self.runner = runner
        self._scratch = _Scratch(fixed=False)
        self._graph_scratch: _Scratch | None = None
        self._graph_splits: torch.Tensor | None = None
        self._graph_meta: dict[int, DecodeMetadata] = {}
        self._verify_meta: dict[tuple[int, int], ExtendMetadata] = {}
        # NOTE: with layer fusion the last KV split merges the splits (no stage-2 launch)
        self._merge_in_stage1 = bool(getattr(getattr(runner, "args", None), "enable_layer_fusion", False))
        self._tickets: torch.Tensor | None = None  # eager forwards' merge tickets; may grow
        self._graph_tickets: torch.Tensor | None = None  # the captured graphs'; never reallocated
        self._graph_max_bs = 0

    # metadata -----------------------------------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        fb = forward_batch
        if fb.forward_mode.is_decode:
            fb.attn_metadata = self._decode_metadata(fb.seq_lens, fb.kv_pool.num_kv_heads)
        elif fb.forward_mode.is_extend:
            fb.attn_metadata = self._extend_metadata(fb)
        else:
            fb.attn_metadata = None

    def _decode_metadata(self, seq_lens: torch.Tensor, num_kv_heads: int) -> DecodeMetadata:
        splits = max_kv_splits_for(seq_lens.shape[0], num_kv_heads, seq_lens.device, cap=MAX_KV_SPLITS)
        return DecodeMetadata(kv_splits_per_request(seq_lens, splits), splits)

    def _extend_metadata(self, fb: ForwardBatch) -> ExtendMetadata:
        if fb.extend_seq_lens is None:
            raise ValueError("an extend batch needs extend_seq_lens")
        ext = fb.extend_seq_lens
        prefix = fb.extend_prefix_lens if fb.extend_prefix_lens is not None else fb.seq_lens - ext
        start = fb.extend_start_loc if fb.extend_start_loc is not None else torch.cumsum(ext, 0) - ext
        if fb.extend_seq_lens_cpu is not None:
            max_len = max(fb.extend_seq_lens_cpu, default=0)
        else:
            max_len = int(ext.max().item()) if ext.numel() else 0
        tree = None
        if fb.tree_masks is not None and any(m is not None for m in fb.tree_masks):
            tree = pack_tree_masks(list(fb.tree_masks), ext.device)
        tail = None
        if fb.forward_mode is ForwardMode.MIXED and tree is None and fb.extend_seq_lens_cpu is not None:
            tail = self._decode_tail(fb, list(fb.extend_seq_lens_cpu))
            if tail is not None:
                max_len = max(fb.extend_seq_lens_cpu[: tail.first], default=0)
        return ExtendMetadata(prefix, ext, start, max_len, tree, decode_tail=tail)

    def _decode_tail(self, fb: ForwardBatch, ext_cpu: list[int]) -> DecodeTail | None:
        """The trailing requests that extend by one token: attention over their whole sequence is a decode's."""
        count = 0
        while count < len(ext_cpu) and ext_cpu[-1 - count] == 1:
            count += 1
        if count == 0:
            return None
        first = len(ext_cpu) - count
        return DecodeTail(first, count, self._decode_metadata(fb.seq_lens[first:], fb.kv_pool.num_kv_heads))

    # forward ------------------------------------------------------------------------------------------------
    def kv_store_target(self, layer: AttentionLayerInfo, forward_batch: ForwardBatch) -> KVStoreTarget | None:
        """The pool's buffers: ``store_kv`` writes them exactly as a fused prologue kernel does."""
        return pool_store_target(layer, forward_batch)

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
        meta = fb.attn_metadata
        if not isinstance(meta, ExtendMetadata):
            meta = self._extend_metadata(fb)
        k_buf, v_buf = fb.kv_pool.get_key_buffer(layer.layer_id), fb.kv_pool.get_value_buffer(layer.layer_id)
        if save_kv_cache:
            store_kv(k_buf, v_buf, fb.out_cache_loc, k, v)
        out = None
        tail = meta.decode_tail
        if meta.zero_fill or tail is not None:
            alloc = torch.zeros if meta.zero_fill else torch.empty
            out = alloc((q.shape[0], layer.num_heads, v_buf.shape[2]), dtype=q.dtype, device=q.device)
        n = meta.extend_lens.shape[0]
        if tail is not None:
            rows = q.shape[0] - tail.count
            self._decode_into(q[rows:], k_buf, v_buf, layer, fb, tail, out[rows:])  # type: ignore[index]
            n = tail.first
        if n or out is None:
            # NOTE: every key, the new ones included, is read back from the pool, as the reference backend does.
            out = extend_attention(
                q, k_buf, v_buf, fb.req_to_token_pool.req_to_token, fb.req_pool_indices[:n],
                meta.prefix_lens[:n], meta.extend_lens[:n], meta.extend_start_loc[:n], meta.max_extend_len,
                layer.scaling, out=out, tree=meta.tree,
            )
        return out.view(q.shape[0], -1)

    def _decode_into(self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, layer: AttentionLayerInfo,
                     fb: ForwardBatch, tail: DecodeTail, out: torch.Tensor) -> None:
        """A MIXED batch's decode tail through the decode kernels, into its rows of ``out``."""
        meta = tail.decode
        ws = meta.workspace
        if ws is None or ws.partial_o.shape[1] != layer.num_heads or ws.partial_o.shape[3] != v_buf.shape[2]:
            po, plse = self._scratch.carve(tail.count, layer.num_heads, meta.max_kv_splits, v_buf.shape[2], q.device)
            tickets = self._merge_tickets(tail.count * k_buf.shape[1], False, q.device)
            ws = meta.workspace = DecodeWorkspace(meta.num_kv_splits, meta.max_kv_splits, po, plse, tickets)
        decode_attention(
            q, k_buf, v_buf, fb.req_to_token_pool.req_to_token, fb.req_pool_indices[tail.first:],
            fb.seq_lens[tail.first:], layer.scaling, workspace=ws, out=out,
        )

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
        meta = fb.attn_metadata
        if not isinstance(meta, DecodeMetadata):
            meta = self._decode_metadata(fb.seq_lens, fb.kv_pool.num_kv_heads)
        k_buf, v_buf = fb.kv_pool.get_key_buffer(layer.layer_id), fb.kv_pool.get_value_buffer(layer.layer_id)
        if save_kv_cache:
            store_kv(k_buf, v_buf, fb.out_cache_loc, k, v)
        batch = fb.seq_lens.shape[0]
        ws = meta.workspace
        if ws is None or ws.partial_o.shape[1] != layer.num_heads or ws.partial_o.shape[3] != v_buf.shape[2]:
            scratch = self._graph_scratch if meta.graph and self._graph_scratch is not None else self._scratch
            po, plse = scratch.carve(batch, layer.num_heads, meta.max_kv_splits, v_buf.shape[2], q.device)
            tickets = self._merge_tickets(batch * k_buf.shape[1], meta.graph, q.device)
            ws = meta.workspace = DecodeWorkspace(meta.num_kv_splits, meta.max_kv_splits, po, plse, tickets)
        out = decode_attention(
            q, k_buf, v_buf, fb.req_to_token_pool.req_to_token, fb.req_pool_indices, fb.seq_lens,
            layer.scaling, workspace=ws,
        )
        return out.view(batch, -1)

    def _merge_tickets(self, pairs: int, graph: bool, device: torch.device) -> torch.Tensor | None:
        """Zeroed tickets for ``pairs`` (request, kv head) pairs, or None where stage 2 runs as its own kernel."""
        if not self._merge_in_stage1:
            return None
        if graph:
            if self._graph_tickets is None or self._graph_tickets.numel() < pairs:
                raise RuntimeError(f"graph merge tickets cover fewer than {pairs} (request, kv head) pairs")
            return self._graph_tickets
        if self._tickets is None or self._tickets.numel() < pairs:
            self._tickets = merge_tickets(pairs, 1, device)
        return self._tickets

    # graph capture (decode) ---------------------------------------------------------------------------------
    def init_graph_state(self, max_bs: int, max_context_len: int) -> None:
        """Fixed buffers for captured decode graphs: per-request split counts and the partials' scratch (the merge
        tickets come with the first capture, which knows the pool's kv heads)."""
        self._graph_max_bs = max_bs
        self._graph_tickets = None
        self._graph_splits = torch.ones(max_bs, dtype=torch.int32, device=self._device())
        self._graph_scratch = _Scratch(fixed=True, reserve_batch=max_bs)
        self._graph_meta = {}

    def init_metadata_capture(self, bs: int, forward_batch: ForwardBatch) -> None:
        if self._graph_splits is None:
            raise RuntimeError("init_graph_state must run before init_metadata_capture")
        if self._graph_tickets is None:
            # NOTE: before any graph is captured, for the largest batch, and never again: graphs hold the address
            self._graph_tickets = merge_tickets(self._graph_max_bs, forward_batch.kv_pool.num_kv_heads,
                                                self._graph_splits.device)
        splits = max_kv_splits_for(bs, forward_batch.kv_pool.num_kv_heads, self._graph_splits.device, MAX_KV_SPLITS)
        meta = DecodeMetadata(self._graph_splits[:bs], splits, graph=True)
        meta.num_kv_splits.copy_(kv_splits_per_request(forward_batch.seq_lens[:bs], splits))
        self._graph_meta[bs] = meta
        forward_batch.attn_metadata = meta

    def init_metadata_replay(self, bs: int, forward_batch: ForwardBatch) -> None:
        meta = self._graph_meta[bs]
        # NOTE: in place: the captured kernels read this very tensor.
        meta.num_kv_splits.copy_(kv_splits_per_request(forward_batch.seq_lens[:bs], meta.max_kv_splits))
        forward_batch.attn_metadata = meta

    # graph capture (verify) --------------------------------------------------------------------------------
    def init_verify_metadata_capture(self, bs: int, tokens_per_request: int, forward_batch: ForwardBatch) -> None:
        """The extend metadata over the graph's static per-request tensors; the grid is sized for N rows each."""
        fb = forward_batch
        if fb.extend_prefix_lens is None or fb.extend_seq_lens is None or fb.extend_start_loc is None:
            raise ValueError("a verify graph's batch needs static extend prefix lens, extend lens and start offsets")
        tree = None
        if fb.tree_masks is not None:
            # NOTE: request i's mask at i * N * N, row stride its own extend length (the kernel's reading)
            n, device = tokens_per_request, fb.extend_seq_lens.device
            tree = (torch.zeros(bs * n * n, dtype=torch.int8, device=device),
                    torch.arange(bs, dtype=torch.int64, device=device) * (n * n))
            _pack_tree_rows(tree[0], list(fb.tree_masks), n)
        meta = ExtendMetadata(fb.extend_prefix_lens, fb.extend_seq_lens, fb.extend_start_loc, tokens_per_request,
                              tree, zero_fill=True)
        self._verify_meta[(bs, tokens_per_request)] = meta
        fb.attn_metadata = meta

    def init_verify_metadata_replay(self, bs: int, tokens_per_request: int, forward_batch: ForwardBatch) -> None:
        # NOTE: the per-request tensors are the static ones the replay rewrote; only tree masks are packed here
        meta = self._verify_meta[(bs, tokens_per_request)]
        if meta.tree is not None and forward_batch.tree_masks is not None:
            _pack_tree_rows(meta.tree[0], list(forward_batch.tree_masks), tokens_per_request)
        forward_batch.attn_metadata = meta

    def _device(self) -> torch.device:
        device = getattr(self.runner, "device", None)
        if device is None:
            raise RuntimeError("graph buffers live on the runner's device; this backend was built without a runner")
        return torch.device(device)
