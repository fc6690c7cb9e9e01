"""Rotary embedding and KV store kernels agree with the torch reference."""

from __future__ import annotations

import pytest
import torch

from sgl.core.memory.kv_pool import KVPool
from sgl.core.ops import reference
from sgl.kernels import rotary_embedding, store_kv


def _cos_sin_cache(max_pos: int, rotary_dim: int, device: torch.device) -> torch.Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)


@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "interleaved"])
@pytest.mark.parametrize("rotary_dim", [32, 16], ids=["full", "partial"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_matches_reference(is_neox: bool, rotary_dim: int, dtype: torch.dtype, device: torch.device) -> None:
    torch.manual_seed(0)
    tokens, heads, kv_heads, head_dim = 6, 4, 2, 32
    positions = torch.tensor([0, 1, 7, 30, 63, 5], device=device)
    # q and k as row-strided views into one qkv tensor, as a model's fused projection produces them
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, device=device)
    q, k = qkv[:, : heads * head_dim], qkv[:, heads * head_dim : (heads + kv_heads) * head_dim]
    cache = _cos_sin_cache(64, rotary_dim, device)
    q_out, k_out = rotary_embedding(positions, q, k, head_dim, cache, is_neox)
    q_ref, k_ref = reference.rotary_embedding(positions, q, k, head_dim, cache, is_neox)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(q_out, q_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(k_out, k_ref, atol=tol, rtol=tol)
    if rotary_dim < head_dim:  # the pass-through features are copied bit for bit
        assert torch.equal(q_out.view(tokens, heads, head_dim)[..., rotary_dim:],
                           q.reshape(tokens, heads, head_dim)[..., rotary_dim:])


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_store_kv_matches_pool_set_kv_buffer(kv_dtype: torch.dtype, device: torch.device) -> None:
    torch.manual_seed(1)
    tokens, kv_heads, head_dim = 5, 2, 24
    ours = KVPool(32, 1, 1, kv_heads, head_dim, kv_dtype, device)
    theirs = KVPool(32, 1, 1, kv_heads, head_dim, kv_dtype, device)
    loc = torch.tensor([3, 17, 0, 9, 32], device=device)  # slot 0 is the padding sink
    k = torch.randn(tokens, kv_heads * head_dim, device=device).to(kv_dtype)
    v = torch.randn(tokens, kv_heads, head_dim, device=device).to(kv_dtype)
    store_kv(ours.k_buffer[0], ours.v_buffer[0], loc, k, v)
    theirs.set_kv_buffer(0, loc, k, v)
    assert torch.equal(ours.k_buffer[0], theirs.k_buffer[0])
    assert torch.equal(ours.v_buffer[0], theirs.v_buffer[0])
    untouched = torch.ones(33, dtype=torch.bool, device=device)
    untouched[loc] = False
    assert not ours.k_buffer[0][untouched].any(), "only the given slots may be written"


def test_store_kv_casts_to_the_buffer_dtype(device: torch.device) -> None:
    pool = KVPool(8, 1, 1, 1, 16, torch.bfloat16, device)
    k = torch.randn(2, 16, device=device)
    loc = torch.tensor([2, 5], device=device)
    store_kv(pool.k_buffer[0], pool.v_buffer[0], loc, k, -k)
    assert pool.k_buffer[0].dtype == torch.bfloat16
    # NOTE: within one bf16 ulp: the interpreter truncates where a GPU rounds to nearest.
    torch.testing.assert_close(pool.k_buffer[0][loc].view(2, 16).float(), k, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(pool.v_buffer[0][loc].view(2, 16).float(), -k, atol=1e-2, rtol=1e-2)


def test_store_kv_rejects_a_non_contiguous_buffer(device: torch.device) -> None:
    buf = torch.zeros(8, 4, 2, 16, device=device)[:, :, 0]  # rows whose heads are not adjacent
    with pytest.raises(ValueError, match="contiguous"):
        store_kv(buf, buf, torch.tensor([1], device=device), torch.zeros(1, 64, device=device),
                 torch.zeros(1, 64, device=device))


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_store_kv_into_fp8_saturates_like_the_pool(kv_dtype: torch.dtype, src_dtype: torch.dtype,
                                                   device: torch.device) -> None:
    """Every finite fp8 value round-trips bit for bit, and values past the finite range saturate (no inf, no NaN).

    NOTE: only exactly representable values here: the interpreter's fp8 rounding of other values is wrong (it drops
    the carry into the exponent), so the bit-exact check of random values runs on a GPU (tests/gpu).
    """
    every = torch.arange(256, dtype=torch.uint8).view(kv_dtype).float()
    finite = every[every.isfinite()]
    bound = torch.finfo(kv_dtype).max
    x = torch.cat([torch.tensor([bound * 4, -bound * 4, 1e30, -1e30]), finite])
    x = torch.cat([x, x.new_zeros(-x.numel() % 16)]).view(-1, 16).to(src_dtype).to(device)
    n = x.shape[0]
    ours = KVPool(n, 1, 1, 1, 16, kv_dtype, device)
    theirs = KVPool(n, 1, 1, 1, 16, kv_dtype, device)
    loc = torch.arange(1, n + 1, device=device)
    store_kv(ours.k_buffer[0], ours.v_buffer[0], loc, x, -x)
    theirs.set_kv_buffer(0, loc, x, -x)
    assert torch.equal(ours.k_buffer[0].view(torch.uint8), theirs.k_buffer[0].view(torch.uint8))
    assert torch.equal(ours.v_buffer[0].view(torch.uint8), theirs.v_buffer[0].view(torch.uint8))
    stored = ours.k_buffer[0][loc].float()
    assert torch.isfinite(stored).all() and stored.abs().max() == bound
