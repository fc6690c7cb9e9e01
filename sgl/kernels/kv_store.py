"""KV store: scatter the new tokens' k and v rows into a layer's paged buffers at their slots."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels._common import block_size, elementwise_warps
from sgl.kernels.pdl import launch_options, wait_for_previous


@triton.jit
def _store_kv_kernel(
    loc_ptr,
    k_ptr,
    v_ptr,
    kbuf_ptr,
    vbuf_ptr,
    stride_k,
    stride_v,
    stride_kbuf,
    stride_vbuf,
    k_width,
    v_width,
    kv_max,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    SATURATE: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_for_previous(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(loc_ptr + t).to(tl.int64)
    ck = tl.arange(0, BLOCK_K)
    mk = ck < k_width
    kv = tl.load(k_ptr + t * stride_k + ck, mask=mk)
    cv = tl.arange(0, BLOCK_V)
    mv = cv < v_width
    vv = tl.load(v_ptr + t * stride_v + cv, mask=mv)
    if SATURATE:  # in fp32: the bound is exact there, and bf16 min/max misbehave under the interpreter
        kv = tl.minimum(tl.maximum(kv.to(tl.float32), -kv_max), kv_max)
        vv = tl.minimum(tl.maximum(vv.to(tl.float32), -kv_max), kv_max)
    # NOTE: an explicit cast to the buffer's element type (Triton rounds downcasts to nearest even), so an fp8 buffer
    # takes bf16/fp32 rows; the kernels that read the buffer upcast again.
    tl.store(kbuf_ptr + slot * stride_kbuf + ck, kv.to(kbuf_ptr.dtype.element_ty), mask=mk)
    tl.store(vbuf_ptr + slot * stride_vbuf + cv, vv.to(vbuf_ptr.dtype.element_ty), mask=mv)


def _token_rows(x: torch.Tensor, n_tokens: int, width: int) -> torch.Tensor:
    x2 = x.reshape(n_tokens, width)
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


_FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2)


def _rows_contiguous(buf: torch.Tensor) -> bool:
    """A slot's heads lie back to back. NOTE: a one-head buffer may be a view (MLA's value: the latent's first
    features), whose slot stride exceeds its width; its row is still one contiguous run."""
    return buf.stride(-1) == 1 and (buf.shape[1] == 1 or buf[0].stride(0) == buf.shape[2])


def store_kv(
    k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """Writes k [T, KVH*D] (or [T, KVH, D]) and v at slots ``loc`` [T] of buffers [slots, KVH, D], in place.

    NOTE: each slot's row of a buffer must be contiguous (the KVPool layout); padded tokens write to slot 0, the sink.
    An fp8 buffer saturates: values are clamped to its finite range first, as ``KVPool.set_kv_buffer`` does.
    """
    n_tokens = loc.numel()
    if n_tokens == 0:
        return
    k_width = k_buffer.shape[1] * k_buffer.shape[2]
    v_width = v_buffer.shape[1] * v_buffer.shape[2]
    if not _rows_contiguous(k_buffer):
        raise ValueError("store_kv needs each slot's row of the K buffer to be contiguous")
    if not _rows_contiguous(v_buffer):
        raise ValueError("store_kv needs each slot's row of the V buffer to be contiguous")
    if k_buffer.dtype != v_buffer.dtype:
        raise ValueError(f"store_kv needs one dtype for K and V buffers, got {k_buffer.dtype} and {v_buffer.dtype}")
    k2, v2 = _token_rows(k, n_tokens, k_width), _token_rows(v, n_tokens, v_width)
    block_k, block_v = block_size(k_width), block_size(v_width)
    saturate = k_buffer.dtype in _FP8
    _store_kv_kernel[(n_tokens,)](
        loc, k2, v2, k_buffer, v_buffer,
        k2.stride(0), v2.stride(0), k_buffer.stride(0), v_buffer.stride(0),
        k_width, v_width, float(torch.finfo(k_buffer.dtype).max) if saturate else 0.0,
        BLOCK_K=block_k, BLOCK_V=block_v, SATURATE=saturate, num_warps=elementwise_warps(max(block_k, block_v)),
        **launch_options(k2),
    )
