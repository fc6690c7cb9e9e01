"""Extend (prefill) attention: each request's new tokens attend to its cached prefix and, causally, to each other,
in one flash-style pass with an online softmax.

Grid (B, H, query blocks of the longest extend). Every key, prefix or new, is gathered from the paged pool through
``req_to_token``: the backend stores the new K/V first, so one loop covers both and the numerics match a reference
that reads the pool (including a KV cache stored narrower than the activations).

A request may carry a tree mask instead of causality among its new tokens (speculative tree verification): an
``[n, n]`` boolean, new token i seeing new token j where it is set; every prefix key stays visible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels._common import block_size, dot_precision, upcast_dot
from sgl.kernels._flash import attend_block

_LOG2E = 1.4426950408889634


@triton.jit
def _extend_kernel(
    q_ptr, o_ptr, kbuf_ptr, vbuf_ptr,
    r2t_ptr, req_idx_ptr, prefix_lens_ptr, extend_lens_ptr, extend_start_ptr, tree_ptr, tree_off_ptr,
    scale_log2,
    stride_qt, stride_qh,
    stride_ot, stride_oh,
    stride_kbs, stride_kbh,
    stride_vbs, stride_vbh,
    stride_r2t,
    group, head_dim, v_head_dim,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, HAS_TREE: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    m_start = tl.program_id(2) * BLOCK_M
    ext_len = tl.load(extend_lens_ptr + b).to(tl.int32)
    prefix_len = tl.load(prefix_lens_ptr + b).to(tl.int32)
    # NOTE: a query block past this request's extend length has no keys to visit (kv_end 0) and stores nothing.
    kv_end = tl.where(m_start < ext_len, prefix_len + tl.minimum(ext_len, m_start + BLOCK_M), 0)
    tok0 = tl.load(extend_start_ptr + b).to(tl.int64)
    req = tl.load(req_idx_ptr + b).to(tl.int64)
    kvh = h // group

    offs_m = m_start + tl.arange(0, BLOCK_M)
    mmask = offs_m < ext_len
    d = tl.arange(0, BLOCK_D)
    dmask = d < head_dim
    dv = tl.arange(0, BLOCK_DV)
    dvmask = dv < v_head_dim
    rows = tok0 + offs_m
    q = tl.load(q_ptr + rows[:, None] * stride_qt + h * stride_qh + d[None, :],
                mask=mmask[:, None] & dmask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # key j (a position in the request) is visible to new token i iff j <= prefix_len + i
    last_visible = prefix_len + offs_m
    if HAS_TREE:
        tree_off = tl.load(tree_off_ptr + b)  # -1: this request is causal
        # NOTE: a tree sees every key up to its last node's; the mask decides among the new ones
        kv_end = tl.where((tree_off >= 0) & (m_start < ext_len), prefix_len + ext_len, kv_end)
    for n0 in range(0, kv_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < kv_end
        slots = tl.load(r2t_ptr + req * stride_r2t + offs_n, mask=nmask, other=0).to(tl.int64)
        k = tl.load(kbuf_ptr + slots[:, None] * stride_kbs + kvh * stride_kbh + d[None, :],
                    mask=nmask[:, None] & dmask[None, :], other=0.0)
        v = tl.load(vbuf_ptr + slots[:, None] * stride_vbs + kvh * stride_vbh + dv[None, :],
                    mask=nmask[:, None] & dvmask[None, :], other=0.0)
        visible = (offs_n[None, :] <= last_visible[:, None]) & nmask[None, :]
        if HAS_TREE:
            # NOTE: the request's flag as a block (a scalar in a load mask trips Triton's interpreter)
            has_tree = (tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int64) + tree_off) >= 0
            new = (offs_n >= prefix_len) & nmask
            bits = tl.load(tree_ptr + tree_off + offs_m[:, None] * ext_len + (offs_n - prefix_len)[None, :],
                           mask=has_tree & mmask[:, None] & new[None, :], other=0)
            in_tree = ((offs_n[None, :] < prefix_len) | (bits != 0)) & nmask[None, :]
            visible = tl.where(has_tree, in_tree, visible)
        m, l, acc = attend_block(q, k, v, visible, m, l, acc, scale_log2, PRECISION)

    out = acc / tl.where(l > 0.0, l, 1.0)[:, None]
    tl.store(o_ptr + rows[:, None] * stride_ot + h * stride_oh + dv[None, :], out.to(o_ptr.dtype.element_ty),
             mask=mmask[:, None] & dvmask[None, :])


def extend_config(head_dim: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): sized for Hopper's shared memory at bf16; smaller for wide heads."""
    if device.type == "cpu":
        return 32, 32, 4
    if head_dim <= 128:
        return 128, 64, 8
    if head_dim > 256:  # MLA's latent (576 wide, padded to 1024)
        return 32, 16, 4
    return 64, 32, 4


def extend_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    extend_start_loc: torch.Tensor,
    max_extend_len: int,
    sm_scale: float,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    tree: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """q [T, H*D] (new tokens, request-major) over buffers [slots, KVH, D] -> [T, H, Dv].

    Request b's new tokens are rows ``extend_start_loc[b] : + extend_lens[b]`` of q; its keys are the slots
    ``req_to_token[req_pool_indices[b], :prefix_lens[b] + extend_lens[b]]``, the new ones already stored.
    ``max_extend_len`` (a host int) sizes the grid. ``tree``: ``pack_tree_masks``'s (bits, offsets).
    """
    num_kv_heads, head_dim = k_buffer.shape[1], k_buffer.shape[2]
    v_head_dim = v_buffer.shape[2]
    n_tokens = q.shape[0]
    q3 = q.view(n_tokens, -1, head_dim)
    num_heads = q3.shape[1]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    if out is None:
        out = torch.empty((n_tokens, num_heads, v_head_dim), dtype=q.dtype, device=q.device)
    batch = extend_lens.shape[0]
    if n_tokens == 0 or batch == 0 or max_extend_len <= 0:
        return out
    bm, bn, warps = extend_config(head_dim, q.device)
    bm, bn = block_m or bm, block_n or bn
    grid = (batch, num_heads, triton.cdiv(max_extend_len, bm))
    tree_bits, tree_offsets = tree if tree is not None else (prefix_lens, prefix_lens)
    _extend_kernel[grid](
        q3, out, k_buffer, v_buffer,
        req_to_token, req_pool_indices, prefix_lens, extend_lens, extend_start_loc, tree_bits, tree_offsets,
        float(sm_scale) * _LOG2E,
        q3.stride(0), q3.stride(1),
        out.stride(0), out.stride(1),
        k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1),
        req_to_token.stride(0),
        num_heads // num_kv_heads, head_dim, v_head_dim,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_size(head_dim), BLOCK_DV=block_size(v_head_dim),
        UPCAST=upcast_dot(q), PRECISION=dot_precision(q), HAS_TREE=tree is not None, num_warps=warps, num_stages=2,
    )
    return out


def pack_tree_masks(masks: list[torch.Tensor | None], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per request an ``[n, n]`` bool mask (None: causal) -> (int8 bits of every mask, row-major, one after another;
    int64 offsets into them, -1 for a causal request)."""
    offsets, parts, at = [], [], 0
    for m in masks:
        if m is None:
            offsets.append(-1)
            continue
        offsets.append(at)
        parts.append(m.reshape(-1).to(torch.int8))
        at += m.numel()
    bits = torch.cat(parts) if parts else torch.zeros(1, dtype=torch.int8)
    return bits.to(device), torch.tensor(offsets, dtype=torch.int64).to(device)
