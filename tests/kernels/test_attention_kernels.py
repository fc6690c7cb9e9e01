"""Decode and extend attention kernels agree with a pure-torch paged-attention oracle."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_oracle import Paged, paged_attention_oracle

from sgl.core.runner.forward_batch import ForwardMode
from sgl.kernels import (
    decode_attention,
    decode_workspace,
    extend_attention,
    kv_splits_per_request,
    max_kv_splits_for,
)

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# (compute dtype, KV cache dtype; None = the compute dtype): an fp8 cache is upcast on load, and the oracle reads the
# same upcast buffers, so the tolerance is the compute dtype's
DTYPE_CASES = [
    pytest.param(torch.float32, None, id="fp32"),
    pytest.param(torch.bfloat16, None, id="bf16"),
    pytest.param(torch.float32, torch.float8_e4m3fn, id="fp32-kv-fp8_e4m3"),
    pytest.param(torch.bfloat16, torch.float8_e4m3fn, id="bf16-kv-fp8_e4m3"),
    pytest.param(torch.bfloat16, torch.float8_e5m2, id="bf16-kv-fp8_e5m2"),
]


def _paged(kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, prefix_lens: list[int]) -> Paged:
    paged = Paged.make(kv_heads, head_dim, dtype, device)
    for r, n in enumerate(prefix_lens):
        paged.fill_prefix(r, n)
    return paged


@pytest.mark.parametrize("dtype,kv_dtype", DTYPE_CASES)
def test_split_kv_decode_with_grouped_heads_matches_oracle(
    dtype: torch.dtype, kv_dtype: torch.dtype | None, device: torch.device
) -> None:
    torch.manual_seed(0)
    heads, kv_heads, head_dim = 8, 2, 32
    seq_lens = [1, 37, 100]  # one key only; several blocks; several blocks in each of several splits
    paged = _paged(kv_heads, head_dim, kv_dtype or dtype, device, seq_lens)
    reqs = torch.tensor([0, 1, 2], device=device)
    seq = torch.tensor(seq_lens, device=device)
    q = torch.randn(3, heads * head_dim, dtype=dtype, device=device)
    k_buf, v_buf = paged.kv_pool.k_buffer[0], paged.kv_pool.v_buffer[0]
    r2t = paged.req_to_token_pool.req_to_token
    ws = decode_workspace(seq, heads, kv_heads, head_dim, max_kv_splits=4)
    ws = ws._replace(num_kv_splits=kv_splits_per_request(seq, 4, min_tokens_per_split=16))
    assert ws.num_kv_splits.tolist() == [1, 3, 4]
    out = decode_attention(q, k_buf, v_buf, r2t, reqs, seq, 1 / math.sqrt(head_dim), workspace=ws, block_n=16)
    ref = paged_attention_oracle(q.view(3, heads, head_dim), k_buf, v_buf, r2t, [0, 1, 2],
                                 [n - 1 for n in seq_lens], [1, 1, 1], 1 / math.sqrt(head_dim))
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_decode_without_grouping_and_narrower_values_matches_oracle(device: torch.device) -> None:
    """One query head per KV head (MHA), v_head_dim < head_dim, and the default workspace and block size."""
    torch.manual_seed(1)
    heads, head_dim, v_dim = 2, 32, 16
    paged = Paged.make(heads, head_dim, torch.float32, device)
    v_wide = paged.kv_pool.v_buffer[0]
    seq_lens = [5, 70]
    for r, n in enumerate(seq_lens):
        paged.fill_prefix(r, n)
    v_buf = v_wide[..., :v_dim].contiguous()
    k_buf, r2t = paged.kv_pool.k_buffer[0], paged.req_to_token_pool.req_to_token
    q = torch.randn(2, heads, head_dim, device=device)
    reqs = torch.tensor([1, 0], device=device)  # request order differs from request-slot order
    out = decode_attention(q, k_buf, v_buf, r2t, reqs, torch.tensor(seq_lens[::-1], device=device), 0.3)
    ref = paged_attention_oracle(q, k_buf, v_buf, r2t, [1, 0], [69, 4], [1, 1], 0.3)
    assert out.shape == (2, heads, v_dim)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_decode_of_a_request_with_no_keys_is_zero_not_nan(device: torch.device) -> None:
    paged = _paged(1, 16, torch.float32, device, [4, 0])
    seq = torch.tensor([4, 0], device=device)
    q = torch.randn(2, 16, device=device)
    out = decode_attention(q, paged.kv_pool.k_buffer[0], paged.kv_pool.v_buffer[0],
                           paged.req_to_token_pool.req_to_token, torch.tensor([0, 1], device=device), seq, 0.25)
    assert torch.isfinite(out).all() and not out[1].any()


@pytest.mark.parametrize("dtype,kv_dtype", DTYPE_CASES)
def test_extend_over_cached_prefixes_matches_oracle(
    dtype: torch.dtype, kv_dtype: torch.dtype | None, device: torch.device
) -> None:
    """The new tokens' K/V come in the compute dtype and are stored (cast) first; every key is read from the pool."""
    torch.manual_seed(2)
    heads, kv_heads, head_dim = 4, 2, 32
    prefix_lens, extend_lens = [0, 21, 40], [35, 1, 17]  # no prefix; a decode-like row; a multi-block prefix
    paged = _paged(kv_heads, head_dim, kv_dtype or dtype, device, prefix_lens)
    fb = paged.batch([0, 1, 2], prefix_lens, extend_lens, mode=ForwardMode.EXTEND, backend=None)
    total = sum(extend_lens)
    q = torch.randn(total, heads * head_dim, dtype=dtype, device=device)
    k = torch.randn(total, kv_heads * head_dim, dtype=dtype, device=device)
    v = torch.randn(total, kv_heads * head_dim, dtype=dtype, device=device)
    paged.kv_pool.set_kv_buffer(0, fb.out_cache_loc, k, v)
    k_buf, v_buf, r2t = paged.kv_pool.k_buffer[0], paged.kv_pool.v_buffer[0], paged.req_to_token_pool.req_to_token
    assert fb.extend_prefix_lens is not None and fb.extend_seq_lens is not None and fb.extend_start_loc is not None
    out = extend_attention(q, k_buf, v_buf, r2t, fb.req_pool_indices, fb.extend_prefix_lens,
                           fb.extend_seq_lens, fb.extend_start_loc, max(extend_lens), 0.2, block_m=16, block_n=16)
    ref = paged_attention_oracle(q.view(total, heads, head_dim), k_buf, v_buf, r2t, [0, 1, 2],
                                 prefix_lens, extend_lens, 0.2)
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_kv_split_counts_stay_within_bounds() -> None:
    seq = torch.tensor([0, 1, 63, 64, 65, 255, 10_000])
    assert kv_splits_per_request(seq, 8).tolist() == [1, 1, 1, 1, 2, 4, 8]
    assert kv_splits_per_request(seq, 8, min_tokens_per_split=256).tolist() == [1, 1, 1, 1, 1, 1, 8]
    cpu = torch.device("cpu")
    assert 1 <= max_kv_splits_for(64, 8, cpu) <= max_kv_splits_for(1, 8, cpu) <= 16
    assert max_kv_splits_for(1, 8, cpu, cap=4) == 4
