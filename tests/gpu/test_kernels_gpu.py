"""Triton kernels against the torch reference at Llama-3.1-8B shapes in bf16, on a real GPU.

Run on a GPU machine: ``pytest tests/gpu/test_kernels_gpu.py -m gpu -s`` (``-s`` shows the decode timing line).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.gpu.nvidia_kernels import require_compiled_kernels_on_nvidia

require_compiled_kernels_on_nvidia()

from sgl.core.memory.kv_pool import to_kv_dtype
from sgl.core.ops import reference
from sgl.kernels import (
    add_rms_norm,
    decode_attention,
    decode_workspace,
    extend_attention,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
    store_kv,
)

pytestmark = pytest.mark.gpu

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE = 32, 8, 128, 4096, 14336
DEV = torch.device("cuda")
BF16 = torch.bfloat16
SCALE = 1 / math.sqrt(HEAD_DIM)
ATTN_TOL = {"atol": 1e-2, "rtol": 2e-2}
KV_DTYPES = [pytest.param(BF16, id="kv-bf16"), pytest.param(torch.float8_e4m3fn, id="kv-fp8_e4m3"),
             pytest.param(torch.float8_e5m2, id="kv-fp8_e5m2")]


@pytest.mark.parametrize("tokens", [1, 64, 4096])
def test_norms_match_reference(tokens: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(tokens, HIDDEN, dtype=BF16, device=DEV)
    r = torch.randn(tokens, HIDDEN, dtype=BF16, device=DEV)
    w = torch.rand(HIDDEN, dtype=BF16, device=DEV) + 0.5
    torch.testing.assert_close(rms_norm(x, w, 1e-5), reference.rms_norm(x, w, 1e-5), atol=1e-2, rtol=1.6e-2)
    normed, summed = add_rms_norm(x, r, w, 1e-5)
    ref_normed, ref_summed = reference.add_rms_norm(x, r, w, 1e-5)
    torch.testing.assert_close(summed, ref_summed, atol=0, rtol=0)
    torch.testing.assert_close(normed, ref_normed, atol=1e-2, rtol=1.6e-2)


@pytest.mark.parametrize("tokens", [1, 64, 2048])
def test_silu_and_mul_matches_reference(tokens: int) -> None:
    torch.manual_seed(1)
    x = torch.randn(tokens, 2 * INTERMEDIATE, dtype=BF16, device=DEV) * 3
    torch.testing.assert_close(silu_and_mul(x), reference.silu_and_mul(x), atol=1e-2, rtol=1.6e-2)


@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_matches_reference(is_neox: bool) -> None:
    torch.manual_seed(2)
    tokens, max_pos = 4096, 8192
    inv_freq = 1.0 / (500000 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32, device=DEV) / HEAD_DIM))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32, device=DEV), inv_freq)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    positions = torch.randint(0, max_pos, (tokens,), device=DEV)
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=BF16, device=DEV)
    q, k = qkv[:, : HEADS * HEAD_DIM], qkv[:, HEADS * HEAD_DIM : (HEADS + KV_HEADS) * HEAD_DIM]
    q_out, k_out = rotary_embedding(positions, q, k, HEAD_DIM, cache, is_neox)
    q_ref, k_ref = reference.rotary_embedding(positions, q, k, HEAD_DIM, cache, is_neox)
    torch.testing.assert_close(q_out, q_ref, atol=1e-2, rtol=1.6e-2)
    torch.testing.assert_close(k_out, k_ref, atol=1e-2, rtol=1.6e-2)


def test_store_kv_writes_exactly_the_given_slots() -> None:
    torch.manual_seed(3)
    slots, tokens = 70_000, 4096
    k_buf = torch.zeros(slots, KV_HEADS, HEAD_DIM, dtype=BF16, device=DEV)
    v_buf = torch.zeros_like(k_buf)
    loc = torch.randperm(slots - 1, device=DEV)[:tokens] + 1
    k = torch.randn(tokens, KV_HEADS * HEAD_DIM, dtype=BF16, device=DEV)
    v = torch.randn(tokens, KV_HEADS * HEAD_DIM, dtype=BF16, device=DEV)
    store_kv(k_buf, v_buf, loc, k, v)
    assert torch.equal(k_buf[loc].view_as(k), k) and torch.equal(v_buf[loc].view_as(v), v)
    assert int((k_buf.abs().sum(dim=(1, 2)) > 0).sum()) == tokens


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_store_kv_into_fp8_is_bit_identical_to_the_pool_cast(kv_dtype: torch.dtype) -> None:
    """Random values round to nearest exactly as torch does, and out-of-range ones saturate as the pool's cast does."""
    torch.manual_seed(6)
    slots, tokens = 8192, 4096
    k_buf = torch.zeros(slots, KV_HEADS, HEAD_DIM, dtype=kv_dtype, device=DEV)
    v_buf = torch.zeros_like(k_buf)
    loc = torch.randperm(slots - 1, device=DEV)[:tokens] + 1
    scale = torch.logspace(-6, 6, tokens, device=DEV)[:, None]  # subnormals to past the finite range
    k = (torch.randn(tokens, KV_HEADS * HEAD_DIM, device=DEV) * scale).to(BF16)
    v = (torch.randn(tokens, KV_HEADS * HEAD_DIM, device=DEV) * scale).to(BF16)
    store_kv(k_buf, v_buf, loc, k, v)
    want_k, want_v = to_kv_dtype(k, kv_dtype), to_kv_dtype(v, kv_dtype)
    assert torch.equal(k_buf[loc].view(tokens, -1).view(torch.uint8), want_k.view(torch.uint8))
    assert torch.equal(v_buf[loc].view(tokens, -1).view(torch.uint8), want_v.view(torch.uint8))
    assert torch.isfinite(k_buf.float()).all()


def _paged(seq_lens: list[int], kv_dtype: torch.dtype = BF16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KV buffers with every request's keys on scattered slots, and the request table pointing at them."""
    total = sum(seq_lens)
    k_buf = torch.randn(total + 1, KV_HEADS, HEAD_DIM, dtype=BF16, device=DEV)
    v_buf = torch.randn_like(k_buf)
    k_buf, v_buf = to_kv_dtype(k_buf, kv_dtype), to_kv_dtype(v_buf, kv_dtype)
    slots = (torch.randperm(total, device=DEV) + 1).to(torch.int32)
    r2t = torch.zeros(len(seq_lens), max(seq_lens), dtype=torch.int32, device=DEV)
    start = 0
    for b, n in enumerate(seq_lens):
        r2t[b, :n] = slots[start : start + n]
        start += n
    return k_buf, v_buf, r2t


def _reference(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, r2t: torch.Tensor,
               prefix: list[int], ext: list[int]) -> torch.Tensor:
    """fp32 attention, q [T, H, D] request-major; new token j of request b sees keys [0, prefix_b + j]."""
    outs, start = [], 0
    for b, (p, n) in enumerate(zip(prefix, ext)):
        idx = r2t[b, : p + n].long()
        k = k_buf[idx].float().repeat_interleave(HEADS // KV_HEADS, dim=1)
        v = v_buf[idx].float().repeat_interleave(HEADS // KV_HEADS, dim=1)
        s = torch.einsum("nhd,shd->hns", q[start : start + n].float(), k) * SCALE
        keep = torch.arange(p + n, device=DEV)[None, :] <= torch.arange(n, device=DEV)[:, None] + p
        outs.append(torch.einsum("hns,shd->nhd", s.masked_fill(~keep[None], float("-inf")).softmax(-1), v))
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
@pytest.mark.parametrize("batch,ctx", [(1, 4096), (8, 1500), (64, 512)])
def test_decode_attention_matches_reference(batch: int, ctx: int, kv_dtype: torch.dtype) -> None:
    """An fp8 cache is upcast on load; the reference reads the same upcast buffers, so bf16's tolerance holds."""
    torch.manual_seed(4)
    seq_lens = [max(1, ctx - 37 * b) for b in range(batch)]
    k_buf, v_buf, r2t = _paged(seq_lens, kv_dtype)
    seq = torch.tensor(seq_lens, device=DEV)
    q = torch.randn(batch, HEADS * HEAD_DIM, dtype=BF16, device=DEV)
    out = decode_attention(q, k_buf, v_buf, r2t, torch.arange(batch, device=DEV), seq, SCALE)
    ref = _reference(q.view(batch, HEADS, HEAD_DIM), k_buf, v_buf, r2t, [n - 1 for n in seq_lens], [1] * batch)
    torch.testing.assert_close(out.float(), ref, **ATTN_TOL)


@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
def test_extend_attention_matches_reference(kv_dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    prefix, ext = [0, 1024, 2048, 7], [2048, 300, 1, 129]
    k_buf, v_buf, r2t = _paged([p + n for p, n in zip(prefix, ext)], kv_dtype)
    total = sum(ext)
    q = torch.randn(total, HEADS * HEAD_DIM, dtype=BF16, device=DEV)
    lens = torch.tensor(ext, device=DEV)
    out = extend_attention(q, k_buf, v_buf, r2t, torch.arange(4, device=DEV), torch.tensor(prefix, device=DEV),
                           lens, torch.cumsum(lens, 0) - lens, max(ext), SCALE)
    ref = _reference(q.view(total, HEADS, HEAD_DIM), k_buf, v_buf, r2t, prefix, ext)
    torch.testing.assert_close(out.float(), ref, **ATTN_TOL)


@pytest.mark.parametrize("kv_dtype", [BF16, torch.float8_e4m3fn], ids=["bf16", "fp8_e4m3"])
def test_decode_attention_timing(capsys: pytest.CaptureFixture[str], kv_dtype: torch.dtype) -> None:
    """Not an assertion on speed: prints time per call and the fraction of HBM bandwidth it reaches."""
    batch, ctx = 32, 2048
    k_buf, v_buf, r2t = _paged([ctx] * batch, kv_dtype)
    seq = torch.full((batch,), ctx, device=DEV)
    reqs = torch.arange(batch, device=DEV)
    q = torch.randn(batch, HEADS * HEAD_DIM, dtype=BF16, device=DEV)
    ws = decode_workspace(seq, HEADS, KV_HEADS, HEAD_DIM)
    for _ in range(3):
        decode_attention(q, k_buf, v_buf, r2t, reqs, seq, SCALE, workspace=ws)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    iters = 50
    start.record()
    for _ in range(iters):
        decode_attention(q, k_buf, v_buf, r2t, reqs, seq, SCALE, workspace=ws)
    end.record()
    torch.cuda.synchronize()
    us = start.elapsed_time(end) * 1000 / iters
    kv_bytes = 2 * batch * ctx * KV_HEADS * HEAD_DIM * k_buf.element_size()
    with capsys.disabled():
        print(f"\ndecode attention bs={batch} ctx={ctx} kv={kv_dtype} splits={ws.max_kv_splits}: {us:.1f} us/call, "
              f"{kv_bytes / us / 1e3:.0f} GB/s of KV read")


@pytest.mark.parametrize("rows", [1, 4, 16])
@pytest.mark.parametrize(("n", "k"), [(6144, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, INTERMEDIATE), (1000, 2048)])
def test_skinny_gemm_matches_fp32_linear_at_model_shapes(rows: int, n: int, k: int) -> None:
    from sgl.kernels.skinny_gemm import skinny_config, skinny_gemm

    torch.manual_seed(rows + n)
    x = torch.randn(rows, k, device=DEV, dtype=BF16)
    w = torch.randn(n, k, device=DEV, dtype=BF16) * 0.02
    ref = torch.nn.functional.linear(x.float(), w.float())
    out = skinny_gemm(x, w)
    assert skinny_config(n, k, DEV).split_k >= 1
    torch.testing.assert_close(out.float(), ref, atol=ref.abs().max().item() * 2**-7, rtol=0)


def test_cuda_platform_streams_small_batches_and_leaves_large_ones_to_cublas() -> None:
    from torch import nn

    from sgl.kernels.linear_method import SkinnyLinearMethod
    from sgl.plugins.cuda.platform import CudaPlatform

    method = CudaPlatform().linear_method()
    assert isinstance(method, SkinnyLinearMethod)
    layer = nn.Module()
    layer.weight = nn.Parameter(torch.randn(512, 256, device=DEV, dtype=BF16), requires_grad=False)
    for rows in (1, 16, 17, 64):
        x = torch.randn(rows, 256, device=DEV, dtype=BF16)
        ref = torch.nn.functional.linear(x.float(), layer.weight.float())
        torch.testing.assert_close(method.apply(layer, x).float(), ref, atol=ref.abs().max().item() * 2**-7, rtol=0)
