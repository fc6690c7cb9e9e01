"""The fused Triton MoE against the reference at real MoE shapes in bf16, on a real GPU, with its bandwidth.

Run on a GPU machine: ``pytest tests/gpu/test_moe_gpu.py -m gpu -s`` (``-s`` shows the timing lines).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available() or torch.version.hip is not None:
    pytest.skip("needs an NVIDIA GPU", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("kernels are decorated for the interpreter in this process; run tests/gpu on its own",
                allow_module_level=True)
pytest.importorskip("triton")

from sgl.core.ops import moe as reference
from sgl.core.ops.moe_routing import RoutingConfig, select_experts
from sgl.kernels.fused_moe import fused_moe

pytestmark = pytest.mark.gpu

DEV = torch.device("cuda")
BF16 = torch.bfloat16
# name: (experts, top_k, hidden, expert intermediate)
SHAPES = {
    "qwen3-30b-a3b": (128, 8, 2048, 768),
    "deepseek-v2-lite": (64, 6, 2048, 1408),
    "mixtral-8x7b": (8, 2, 4096, 14336),
}


def _weights(e: int, h: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=DEV).manual_seed(0)
    w13 = torch.randn(e, 2 * i, h, device=DEV, dtype=BF16, generator=g) / h**0.5
    w2 = torch.randn(e, h, i, device=DEV, dtype=BF16, generator=g) / i**0.5
    return w13, w2


@pytest.mark.parametrize("tokens", [1, 16, 512])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_fused_moe_matches_reference_at_real_shapes(name: str, tokens: int) -> None:
    e, k, h, i = SHAPES[name]
    w13, w2 = _weights(e, h, i)
    x = torch.randn(tokens, h, device=DEV, dtype=BF16)
    topk = select_experts(torch.randn(tokens, e, device=DEV), RoutingConfig(top_k=k, num_experts=e, renormalize=True))
    out = fused_moe(x, w13, w2, topk.weights, topk.ids)
    ref = reference.fused_moe(x, w13, w2, topk.weights, topk.ids)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_fused_moe_decode_bandwidth(name: str) -> None:
    """Batch-1 decode reads top_k experts' weights: prints achieved GB/s against those bytes."""
    e, k, h, i = SHAPES[name]
    w13, w2 = _weights(e, h, i)
    x = torch.randn(1, h, device=DEV, dtype=BF16)
    topk = select_experts(torch.randn(1, e, device=DEV), RoutingConfig(top_k=k, num_experts=e, renormalize=True))
    for _ in range(3):
        fused_moe(x, w13, w2, topk.weights, topk.ids)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    n = 50
    start.record()
    for _ in range(n):
        fused_moe(x, w13, w2, topk.weights, topk.ids)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / n
    bytes_read = k * 3 * h * i * 2
    print(f"\n{name}: batch-1 fused MoE {ms * 1e3:.1f} us, {bytes_read / ms / 1e6:.0f} GB/s over the active experts")
    assert ms > 0


def _latent_attention_reference(q: torch.Tensor, cache: torch.Tensor, kv_lora: int, scale: float) -> torch.Tensor:
    """q [H, 576] over one request's latent rows [S, 576] (the value: their first kv_lora features), causal-free."""
    scores = (q.float() @ cache.float().T) * scale
    return scores.softmax(-1) @ cache[:, :kv_lora].float()


def test_triton_attention_over_the_mla_latent_pool_at_deepseek_shapes() -> None:
    """16 heads over one 576-wide latent per token, the value a view of the key buffer (DeepSeek-V2-Lite's layer)."""
    from sgl.core.memory.kv_pool import MLAKVPool
    from sgl.kernels import decode_attention, extend_attention

    heads, kv_lora, rope, seq = 16, 512, 64, 700
    scale = (128 + 64) ** -0.5
    pool = MLAKVPool(4096, 1, 1, kv_lora + rope, kv_lora, BF16, DEV)
    slots = torch.randperm(4096, device=DEV)[:seq] + 1
    latent = torch.randn(seq, kv_lora + rope, device=DEV, dtype=BF16)
    pool.set_kv_buffer(0, slots, latent, latent[:, :kv_lora])
    r2t = torch.zeros(1, 1024, dtype=torch.int32, device=DEV)
    r2t[0, :seq] = slots.int()
    k_buf, v_buf = pool.get_key_buffer(0), pool.get_value_buffer(0)
    cache = k_buf[slots.long(), 0]
    q = torch.randn(1, heads * (kv_lora + rope), device=DEV, dtype=BF16)
    out = decode_attention(q, k_buf, v_buf, r2t, torch.zeros(1, dtype=torch.int64, device=DEV),
                           torch.tensor([seq], device=DEV), scale)
    ref = _latent_attention_reference(q.view(heads, -1), cache, kv_lora, scale)
    torch.testing.assert_close(out[0].float(), ref, atol=2e-2, rtol=2e-2)
    # the last 5 tokens as an extend over the first seq - 5: token j sees keys [0, seq - 5 + j]
    n = 5
    qe = torch.randn(n, heads * (kv_lora + rope), device=DEV, dtype=BF16)
    out = extend_attention(qe, k_buf, v_buf, r2t, torch.zeros(1, dtype=torch.int64, device=DEV),
                           torch.tensor([seq - n], device=DEV), torch.tensor([n], device=DEV),
                           torch.tensor([0], device=DEV), n, scale)
    for j in range(n):
        ref = _latent_attention_reference(qe[j].view(heads, -1), cache[: seq - n + j + 1], kv_lora, scale)
        torch.testing.assert_close(out[j].float(), ref, atol=2e-2, rtol=2e-2)
