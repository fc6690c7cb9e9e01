"""The fused decoder-layer kernels against the unfused kernels they replace (bit for bit: same arithmetic) and the
torch reference (within the unfused kernels' tolerances): the attention prologue (head norms + rope + KV store) and
the down projection that applies the MLP's activation to its input tiles."""

from __future__ import annotations

import pytest
import torch

from sgl.core.memory.kv_pool import KVPool
from sgl.core.ops import reference
from sgl.kernels import (
    gelu_tanh_and_mul,
    qk_norm_rope_store_kv,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
    store_kv,
)
from sgl.kernels.skinny_gemm import SkinnyConfig, skinny_gemm, split_tickets

HEADS, KV_HEADS, HEAD_DIM, EPS = 4, 2, 32, 1e-6


def _cache(rotary_dim: int, device: torch.device, max_pos: int = 64) -> torch.Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)


def _unfused_kernels(positions: torch.Tensor, qkv: torch.Tensor, cache: torch.Tensor, is_neox: bool,
                     norms: tuple[torch.Tensor, torch.Tensor] | None, pool: KVPool, loc: torch.Tensor) -> torch.Tensor:
    """What LlamaAttention ran before the fusion: head norms, rope, then the backend's store_kv."""
    t = qkv.shape[0]
    q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    if norms is not None:
        q = rms_norm(q.reshape(-1, HEAD_DIM), norms[0], EPS).view(t, -1)
        k = rms_norm(k.reshape(-1, HEAD_DIM), norms[1], EPS).view(t, -1)
    q, k = rotary_embedding(positions, q, k, HEAD_DIM, cache, is_neox)
    store_kv(pool.k_buffer[0], pool.v_buffer[0], loc, k, v.contiguous())
    return q


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("rope", ["neox", "interleaved-partial"])
@pytest.mark.parametrize("model", ["qwen3", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prologue_matches_unfused_kernels_and_reference(
    dtype: torch.dtype, model: str, rope: str, page_size: int, device: torch.device
) -> None:
    torch.manual_seed(0)
    tokens = 5
    is_neox, rotary_dim = (True, HEAD_DIM) if rope == "neox" else (False, HEAD_DIM // 2)
    cache = _cache(rotary_dim, device)
    positions = torch.tensor([0, 3, 17, 40, 63], device=device)
    # NOTE: 2 x the range of randn so some heads' norms differ visibly from 1
    qkv = (2 * torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device=device)).to(dtype)
    norms: tuple[torch.Tensor, torch.Tensor] | None = None
    if model == "qwen3":
        qn, kn = (torch.rand(HEAD_DIM, device=device).to(dtype) + 0.5 for _ in range(2))
        norms = (qn, kn)
    pools = [KVPool(8 * page_size, page_size, 1, KV_HEADS, HEAD_DIM, dtype, device) for _ in range(3)]
    loc = torch.tensor([page_size, page_size + 1, 3 * page_size, 5 * page_size + page_size - 1, 0], device=device)
    qw, kw = norms if norms is not None else (None, None)

    q = qk_norm_rope_store_kv(positions, qkv, HEADS, KV_HEADS, HEAD_DIM, cache, is_neox, qw, kw, EPS,
                              pools[0].k_buffer[0], pools[0].v_buffer[0], loc)
    q_unfused = _unfused_kernels(positions, qkv, cache, is_neox, norms, pools[1], loc)
    q_ref = reference.qk_norm_rope_store_kv(positions, qkv, HEADS, KV_HEADS, HEAD_DIM, cache, is_neox, qw, kw, EPS,
                                            pools[2].k_buffer[0], pools[2].v_buffer[0], loc)

    assert q.is_contiguous() and q.shape == (tokens, HEADS * HEAD_DIM) and q.dtype == dtype
    assert torch.equal(q, q_unfused)
    assert torch.equal(pools[0].k_buffer[0], pools[1].k_buffer[0])
    assert torch.equal(pools[0].v_buffer[0], pools[1].v_buffer[0])
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(q, q_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(pools[0].k_buffer[0], pools[2].k_buffer[0], atol=tol, rtol=tol)
    assert torch.equal(pools[0].v_buffer[0], pools[2].v_buffer[0])
    written = torch.zeros(pools[0].k_buffer[0].shape[0], dtype=torch.bool, device=device)
    written[loc] = True
    assert pools[0].k_buffer[0][written[:, None, None].expand_as(pools[0].k_buffer[0])].abs().sum() > 0
    assert not pools[0].k_buffer[0][~written].any(), "only the tokens' slots may be written"


def test_prologue_into_fp8_saturates_like_the_kv_store(device: torch.device) -> None:
    torch.manual_seed(2)
    kv_dtype = torch.float8_e4m3fn
    qkv = 300 * torch.randn(3, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device=device)  # past e4m3's 448 often
    cache, positions = _cache(HEAD_DIM, device), torch.tensor([1, 2, 9], device=device)
    loc = torch.tensor([4, 1, 7], device=device)
    ours, unfused = (KVPool(8, 1, 1, KV_HEADS, HEAD_DIM, kv_dtype, device) for _ in range(2))
    q = qk_norm_rope_store_kv(positions, qkv, HEADS, KV_HEADS, HEAD_DIM, cache, True, None, None, EPS,
                              ours.k_buffer[0], ours.v_buffer[0], loc)
    assert torch.equal(q, _unfused_kernels(positions, qkv, cache, True, None, unfused, loc))
    for mine, other in ((ours.k_buffer[0], unfused.k_buffer[0]), (ours.v_buffer[0], unfused.v_buffer[0])):
        assert torch.equal(mine.view(torch.uint8), other.view(torch.uint8))
        assert torch.isfinite(mine.float()).all() and mine.float().abs().max() == 448
    # NOTE: no comparison with torch's cast here: the interpreter's fp32 -> e4m3 cast is a binade off next to powers of
    # two (127.9 -> 64), in store_kv alike; tests/gpu compares the compiled kernel with the reference


def test_prologue_refuses_one_head_norm_without_the_other(device: torch.device) -> None:
    pool = KVPool(8, 1, 1, KV_HEADS, HEAD_DIM, torch.float32, device)
    qkv = torch.zeros(1, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device=device)
    with pytest.raises(ValueError, match="both weights or neither"):
        qk_norm_rope_store_kv(torch.zeros(1, dtype=torch.int64, device=device), qkv, HEADS, KV_HEADS, HEAD_DIM,
                              _cache(HEAD_DIM, device), True, torch.ones(HEAD_DIM, device=device), None, EPS,
                              pool.k_buffer[0], pool.v_buffer[0], torch.ones(1, dtype=torch.int64, device=device))


@pytest.mark.parametrize("m", [1, 3], ids=["one-row", "rows"])  # NOTE: one row activates only its own row
@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_skinny_gemm_matches_activation_then_gemm(
    dtype: torch.dtype, act: str, split_k: int, m: int, device: torch.device
) -> None:
    """Same bits as the activation kernel followed by the skinny GEMM; the reference's within bf16 rounding."""
    torch.manual_seed(3)
    k, n = 192, 80  # NOTE: K not a multiple of the K block, N not of the N block: both masks matter
    gate_up = (2 * torch.randn(m, 2 * k, device=device)).to(dtype)
    w = (torch.randn(n, k, device=device) / 8).to(dtype)
    bias = torch.randn(n, device=device).to(dtype)
    cfg = SkinnyConfig(32, 64, split_k, 4, 1)
    op, ref_op = {"silu": (silu_and_mul, reference.silu_and_mul),
                  "gelu_tanh": (gelu_tanh_and_mul, reference.gelu_tanh_and_mul)}[act]
    y = skinny_gemm(gate_up, w, bias, cfg, gated=act)
    assert torch.equal(y, skinny_gemm(op(gate_up), w, bias, cfg))
    y_ref = torch.nn.functional.linear(ref_op(gate_up).float(), w.float(), bias.float())
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(y.float(), y_ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("gated", [None, "silu"])
@pytest.mark.parametrize("split_k", [2, 4])
def test_skinny_gemm_sums_splits_in_kernel_with_tickets(split_k: int, gated: str | None, device: torch.device) -> None:
    """The last split of each tile sums the partials in split order: the bits of the separate reduce kernel, and the
    tickets are zero again after every call (a graph replays the same launch)."""
    torch.manual_seed(5)
    m, k, n = 2, 512, 150
    x = torch.randn(m, 2 * k if gated else k, device=device).to(torch.bfloat16)
    w = (torch.randn(n, k, device=device) / 16).to(torch.bfloat16)
    bias = torch.randn(n, device=device).to(torch.bfloat16)
    cfg = SkinnyConfig(64, 64, split_k, 4, 1)
    tickets = torch.zeros(3, dtype=torch.int32, device=device)
    expected = skinny_gemm(x, w, bias, cfg, gated=gated)
    for _ in range(2):
        assert torch.equal(skinny_gemm(x, w, bias, cfg, gated=gated, tickets=tickets), expected)
        assert not tickets.any()
    no_bias = skinny_gemm(x, w, None, cfg, gated=gated)
    assert torch.equal(skinny_gemm(x, w, None, cfg, gated=gated, tickets=tickets), no_bias)
    assert split_tickets(n, k, device).shape[0] >= 3


def test_gated_skinny_gemm_refuses_an_ungated_width(device: torch.device) -> None:
    with pytest.raises(ValueError, match="gated"):
        skinny_gemm(torch.zeros(1, 64, device=device), torch.zeros(8, 64, device=device), gated="silu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_merge_by_the_last_split_gives_the_merge_kernel_bits(dtype: torch.dtype, device: torch.device) -> None:
    """Stage 2 folded into stage 1 (the last split of each request and kv head merges): the same bits as the merge
    kernel, over requests with 1 to 4 splits, grouped heads, a request with no keys; tickets zero after each call."""
    from kernel_oracle import Paged

    from sgl.kernels.decode_attn import DecodeWorkspace, decode_attention, decode_workspace, merge_tickets

    torch.manual_seed(6)
    heads, kv_heads, head_dim = 4, 2, 32
    seq = [200, 70, 3, 0]
    paged = Paged.make(kv_heads, head_dim, dtype, device)
    for r, n in enumerate(seq):
        if n:
            paged.fill_prefix(r, n)
    r2t = paged.req_to_token_pool.req_to_token
    reqs, seq_t = torch.arange(4, device=device), torch.tensor(seq, device=device)
    q = torch.randn(4, heads * head_dim, device=device).to(dtype)
    ws = decode_workspace(seq_t, heads, kv_heads, head_dim, max_kv_splits=4)
    assert sorted(set(ws.num_kv_splits.tolist())) == [1, 2, 4]
    k_buf, v_buf = paged.kv_pool.k_buffer[0], paged.kv_pool.v_buffer[0]
    want = decode_attention(q, k_buf, v_buf, r2t, reqs, seq_t, 0.2, workspace=ws)
    tickets = merge_tickets(4, kv_heads, device)
    merged_ws = DecodeWorkspace(*ws[:4], tickets=tickets)
    for _ in range(2):
        assert torch.equal(decode_attention(q, k_buf, v_buf, r2t, reqs, seq_t, 0.2, workspace=merged_ws), want)
        assert not tickets.any()
    assert not want[3].any()
