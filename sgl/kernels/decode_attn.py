"""Paged decode attention with split-KV, grouped-query heads batched per program.

Stage 1 (grid B x KVH x S): each program takes one request, one KV head and one split of that request's context, and
computes a partial softmax-weighted sum for all query heads of the KV head's group at once (so each K/V row is read
once per group, not once per query head). Stage 2 (grid B x H) merges the splits by their log-sum-exp; given merge
tickets, the split of each (request, KV head) that finishes last runs stage 2's code for its group instead, and
stage 2 is not launched (one launch per layer fewer at small batch, where decode is launch-bound).

Slots come straight from ``req_to_token[req_pool_indices[b], :seq_lens[b]]``: no flattened index list is built.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sgl.kernels._common import block_size, dot_precision, fp8_kv_as_fp16, sm_count, upcast_dot
from sgl.kernels._flash import attend_block
from sgl.kernels.pdl import launch_options, wait_for_previous

_LOG2E = 1.4426950408889634


class DecodeWorkspace(NamedTuple):
    """Per-forward scratch shared by every layer: partial outputs and their base-2 log-sum-exp."""

    num_kv_splits: torch.Tensor  # [B] int32, splits used by each request (1 <= n <= max_kv_splits)
    max_kv_splits: int  # the grid's split dimension
    partial_o: torch.Tensor  # [B, H, max_kv_splits, Dv] fp32
    partial_lse: torch.Tensor  # [B, H, max_kv_splits] fp32
    # NOTE: [>= B * KVH] int32 zeros (``merge_tickets``): given, the last split of each (request, kv head) merges in
    # stage 1 and stage 2 is not launched; the kernel leaves them zero, so layers and graph replays share them
    tickets: torch.Tensor | None = None


def merge_tickets(batch: int, num_kv_heads: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(batch * num_kv_heads, dtype=torch.int32, device=device)


@triton.jit
def _decode_partial_kernel(
    q_ptr, k_ptr, v_ptr, r2t_ptr, req_idx_ptr, seq_lens_ptr, splits_ptr, po_ptr, plse_ptr,
    scale_log2,
    stride_qb, stride_qh,
    stride_ks, stride_kh,
    stride_vs, stride_vh,
    stride_r2t,
    stride_pob, stride_poh, stride_pos,
    stride_plb, stride_plh,
    group, head_dim, v_head_dim,
    o_ptr, tickets_ptr, stride_ob, stride_oh, n_kv_heads,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, KV_FP16: tl.constexpr,
    MERGE: tl.constexpr, MAX_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, USE_PDL: tl.constexpr,
):
    """MERGE: the split of (request, kv head) that finishes last (a ticket each, reset by it) merges the group's heads
    with the merge kernel's own code, so stage 2 needs no launch of its own."""
    wait_for_previous(USE_PDL)
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b).to(tl.int32)
    n_splits = tl.load(splits_ptr + b).to(tl.int32)
    req = tl.load(req_idx_ptr + b).to(tl.int64)
    split_len = tl.cdiv(seq_len, n_splits)
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    hg = tl.arange(0, BLOCK_H)
    heads = kvh * group + hg
    hmask = hg < group
    d = tl.arange(0, BLOCK_D)
    dmask = d < head_dim
    dv = tl.arange(0, BLOCK_DV)
    dvmask = dv < v_head_dim
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=hmask[:, None] & dmask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    if KV_FP16:
        q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)

    m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        nmask = offs < end
        slots = tl.load(r2t_ptr + req * stride_r2t + offs, mask=nmask, other=0).to(tl.int64)
        k = tl.load(k_ptr + slots[:, None] * stride_ks + kvh * stride_kh + d[None, :],
                    mask=nmask[:, None] & dmask[None, :], other=0.0)
        v = tl.load(v_ptr + slots[:, None] * stride_vs + kvh * stride_vh + dv[None, :],
                    mask=nmask[:, None] & dvmask[None, :], other=0.0)
        if KV_FP16:
            k = k.to(tl.float16)
            v = v.to(tl.float16)
        m, l, acc = attend_block(q, k, v, nmask[None, :], m, l, acc, scale_log2, PRECISION)

    # NOTE: the lse is base 2, matching the scores; an empty split writes -inf and drops out of the merge.
    has = l > 0.0
    out = acc / tl.where(has, l, 1.0)[:, None]
    lse = tl.where(has, m + tl.log2(tl.where(has, l, 1.0)), float("-inf"))
    po = po_ptr + b * stride_pob + heads[:, None] * stride_poh + split * stride_pos + dv[None, :]
    tl.store(po, out, mask=hmask[:, None] & dvmask[None, :])
    tl.store(plse_ptr + b * stride_plb + heads * stride_plh + split, lse, mask=hmask)
    if MERGE:
        # NOTE: as in skinny_gemm: every thread's partial is stored before the ticket (barrier, then acq_rel), and
        # the merging split reads the others' partials from L2 (.cg)
        tl.debug_barrier()
        ticket_ptr = tickets_ptr + b * n_kv_heads + kvh
        if tl.atomic_add(ticket_ptr, 1, sem="acq_rel", scope="gpu") == MAX_SPLITS - 1:
            for hh in range(group):
                head = kvh * group + hh
                _merge_head(po_ptr + b * stride_pob + head * stride_poh, plse_ptr + b * stride_plb + head * stride_plh,
                            o_ptr + b * stride_ob + head * stride_oh, n_splits, stride_pos, v_head_dim,
                            BLOCK_S, BLOCK_DV)
            tl.store(ticket_ptr, 0)  # NOTE: every split has taken its ticket: the next layer starts at 0


@triton.jit
def _merge_head(
    po_ptr, plse_ptr, o_ptr, n_splits, stride_pos, v_head_dim,
    BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One head's output from its splits' partials, weighted by their log-sum-exp (po/plse/o point at the head)."""
    s = tl.arange(0, BLOCK_S)
    smask = s < n_splits
    dv = tl.arange(0, BLOCK_DV)
    dvmask = dv < v_head_dim
    lse = tl.load(plse_ptr + s, mask=smask, other=float("-inf"), cache_modifier=".cg")
    top = tl.max(lse, axis=0)
    # NOTE: a request with no keys at all (seq_len 0, a padded row) has every lse at -inf; its output is zeros.
    top = tl.where(top == float("-inf"), 0.0, top)
    w = tl.exp2(lse - top)
    parts = tl.load(po_ptr + s[:, None] * stride_pos + dv[None, :], mask=smask[:, None] & dvmask[None, :], other=0.0,
                    cache_modifier=".cg")
    total = tl.sum(w, axis=0)
    out = tl.sum(parts * w[:, None], axis=0) / tl.where(total > 0.0, total, 1.0)
    tl.store(o_ptr + dv, out.to(o_ptr.dtype.element_ty), mask=dvmask)


@triton.jit
def _decode_merge_kernel(
    po_ptr, plse_ptr, splits_ptr, o_ptr,
    stride_pob, stride_poh, stride_pos,
    stride_plb, stride_plh,
    stride_ob, stride_oh,
    v_head_dim,
    BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr, USE_PDL: tl.constexpr,
):
    wait_for_previous(USE_PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    n_splits = tl.load(splits_ptr + b).to(tl.int32)
    _merge_head(po_ptr + b * stride_pob + h * stride_poh, plse_ptr + b * stride_plb + h * stride_plh,
                o_ptr + b * stride_ob + h * stride_oh, n_splits, stride_pos, v_head_dim, BLOCK_S, BLOCK_DV)


def max_kv_splits_for(batch_size: int, num_kv_heads: int, device: torch.device, cap: int = 16) -> int:
    """Splits per request so that stage 1 has a few waves of programs; depends on the batch size only (graph-safe)."""
    programs = max(batch_size * num_kv_heads, 1)
    want = triton.cdiv(4 * sm_count(device), programs)
    return max(1, min(cap, block_size(want)))


MIN_TOKENS_PER_SPLIT = 64


def kv_splits_per_request(
    seq_lens: torch.Tensor, max_kv_splits: int, min_tokens_per_split: int = MIN_TOKENS_PER_SPLIT
) -> torch.Tensor:
    """[B] int32: short contexts take fewer splits (no program reads fewer than ``min_tokens_per_split`` keys).

    NOTE: one block of keys per program at least; a small batch has few programs, and a split that walks several
    blocks serially is latency the device cannot hide (benchmarks/decode_kernel_sweep.py, batch 1).
    """
    n = torch.div(seq_lens + (min_tokens_per_split - 1), min_tokens_per_split, rounding_mode="floor")
    return n.clamp_(1, max_kv_splits).to(torch.int32)


def decode_workspace(
    seq_lens: torch.Tensor, num_heads: int, num_kv_heads: int, v_head_dim: int, max_kv_splits: int | None = None,
    min_tokens_per_split: int = MIN_TOKENS_PER_SPLIT,
) -> DecodeWorkspace:
    batch = seq_lens.shape[0]
    splits = max_kv_splits or max_kv_splits_for(batch, num_kv_heads, seq_lens.device)
    dev = seq_lens.device
    return DecodeWorkspace(
        num_kv_splits=kv_splits_per_request(seq_lens, splits, min_tokens_per_split),
        max_kv_splits=splits,
        partial_o=torch.empty((batch, num_heads, splits, v_head_dim), dtype=torch.float32, device=dev),
        partial_lse=torch.empty((batch, num_heads, splits), dtype=torch.float32, device=dev),
    )


def decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: float,
    workspace: DecodeWorkspace | None = None,
    out: torch.Tensor | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    fp8_as_fp16: bool | None = None,
) -> torch.Tensor:
    """One query token per request: q [B, H*D] or [B, H, D] over buffers [slots, KVH, D] -> [B, H, Dv].

    The keys of request b are the slots ``req_to_token[req_pool_indices[b], :seq_lens[b]]``; the workspace (one per
    forward, shared by layers) comes from ``decode_workspace``.
    """
    batch = seq_lens.shape[0]
    num_kv_heads, head_dim = k_buffer.shape[1], k_buffer.shape[2]
    v_head_dim = v_buffer.shape[2]
    q3 = q.view(batch, -1, head_dim)
    num_heads = q3.shape[1]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty((batch, num_heads, v_head_dim), dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    ws = workspace if workspace is not None else decode_workspace(seq_lens, num_heads, num_kv_heads, v_head_dim)
    po, plse = ws.partial_o, ws.partial_lse
    block_h = max(16, block_size(group))
    # NOTE: an fp8 cache moves half the bytes per block of keys: smaller blocks on one warp keep more of them in
    # flight (H200, 384 x 1536: 321 us per call against 392 us at bf16's tile; benchmarks/decode_kernel_sweep.py);
    # bf16 is flat across tiles and reads at the bandwidth ceiling
    tile = (32, 1, 3) if k_buffer.element_size() == 1 else (64, 4, 2)
    if head_dim > 256:  # NOTE: MLA's 576-wide latent: a 64 x 1024 key block per stage would not fit shared memory
        tile = (16, 4, 1)
    block_n, num_warps, num_stages = block_n or tile[0], num_warps or tile[1], num_stages or tile[2]
    if fp8_as_fp16 is None:
        fp8_as_fp16 = fp8_kv_as_fp16(q, k_buffer)
    tickets = ws.tickets
    merge = tickets is not None
    if tickets is not None and tickets.numel() < batch * num_kv_heads:
        raise ValueError(f"the workspace's tickets cover {tickets.numel()} (request, kv head) pairs, "
                         f"need {batch * num_kv_heads}")
    _decode_partial_kernel[(batch, num_kv_heads, ws.max_kv_splits)](
        q3, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, ws.num_kv_splits, po, plse,
        float(sm_scale) * _LOG2E,
        q3.stride(0), q3.stride(1),
        k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1),
        req_to_token.stride(0),
        po.stride(0), po.stride(1), po.stride(2),
        plse.stride(0), plse.stride(1),
        group, head_dim, v_head_dim,
        out, tickets if tickets is not None else ws.num_kv_splits, out.stride(0), out.stride(1), num_kv_heads,
        BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_D=block_size(head_dim), BLOCK_DV=block_size(v_head_dim),
        UPCAST=upcast_dot(q), PRECISION=dot_precision(q), KV_FP16=fp8_as_fp16,
        MERGE=merge, MAX_SPLITS=ws.max_kv_splits, BLOCK_S=block_size(ws.max_kv_splits),
        num_warps=num_warps, num_stages=num_stages, **launch_options(q),
    )
    if merge:
        return out
    _decode_merge_kernel[(batch, num_heads)](
        po, plse, ws.num_kv_splits, out,
        po.stride(0), po.stride(1), po.stride(2),
        plse.stride(0), plse.stride(1),
        out.stride(0), out.stride(1),
        v_head_dim,
        BLOCK_S=block_size(ws.max_kv_splits), BLOCK_DV=block_size(v_head_dim), num_warps=4, **launch_options(q),
    )
    return out
