"""The fused Triton MoE against the reference at real MoE shapes in bf16 (and with FP8 experts: block-wise, online,
per-channel and per-tensor; and AWQ / GPTQ int4 experts), on a real GPU, with its bandwidth.

Run on a GPU machine: ``pytest tests/gpu/test_moe_gpu.py -m gpu -s`` (``-s`` shows the timing lines).
"""

from __future__ import annotations

import pytest
import torch

from tests.gpu.nvidia_kernels import require_compiled_kernels_on_nvidia

require_compiled_kernels_on_nvidia()

from sgl.core.ops import moe as reference
from sgl.core.ops.moe_routing import RoutingConfig, select_experts
from sgl.kernels.fused_moe import fused_moe
from tests.gpu.timing import event_ms

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


def _replayed_ms(fn: object, n: int = 50) -> tuple[float, float]:
    """Milliseconds per call of ``fn``: (captured in a CUDA graph and replayed: the kernels alone, as a decode graph
    runs them; eager: the host's launches included, which at batch 1 take longer than the kernels)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()  # type: ignore[operator]
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()  # type: ignore[operator]
    return event_ms(graph.replay, n), event_ms(fn, n)  # type: ignore[arg-type]


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
    ms, eager_ms = _replayed_ms(lambda: fused_moe(x, w13, w2, topk.weights, topk.ids))
    bytes_read = k * 3 * h * i * 2
    print(f"\n{name}: batch-1 fused MoE {ms * 1e3:.1f} us, {bytes_read / ms / 1e6:.0f} GB/s over the active experts "
          f"(graph-replayed; eager {eager_ms * 1e3:.1f} us)")
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


# name: (experts, top_k, hidden, expert intermediate); DeepSeek-V3's expert shape with 32 of its 256 experts (the
# reference dequantizes every expert to fp32)
FP8_SHAPES = {
    "qwen3-30b-a3b-fp8": (128, 8, 2048, 768),
    "deepseek-v3-experts": (32, 8, 7168, 2048),
}


def _fp8_experts(e: int, h: int, i: int, block: tuple[int, int] | None) -> tuple[torch.nn.Module, object]:
    """A layer of ``e`` random experts in the FP8 method's layout: block-quantized (as DeepSeek-V3 / Qwen3-FP8
    releases are), or dense and quantized per row after loading (online)."""
    from sgl.plugins.quant import fp8_math as fm
    from sgl.plugins.quant.fp8_linear import Fp8Scheme
    from sgl.plugins.quant.fp8_moe import Fp8MoEMethod

    scheme = (Fp8Scheme("block", "group", block, scale_name="weight_scale_inv") if block is not None
              else Fp8Scheme("channel", "token", serialized=False))
    layer = torch.nn.Module()
    method = Fp8MoEMethod(scheme)
    with torch.device(DEV):
        method.create_weights(layer, e, h, i, BF16)
    w13, w2 = _weights(e, h, i)
    for group, w in (("w13", w13), ("w2", w2)):
        if block is None:
            getattr(layer, f"{group}_weight").data.copy_(w)
            continue
        for x in range(e):
            q, s = fm.quantize_blocks(w[x], block)
            getattr(layer, f"{group}_weight").data[x].copy_(q)
            getattr(layer, f"{group}_weight_scale_inv").data[x].copy_(s)
    method.process_weights_after_loading(layer)
    return layer, scheme


@pytest.mark.parametrize("block", [(128, 128), None], ids=["block128", "online"])
@pytest.mark.parametrize("tokens", [1, 16, 512])
@pytest.mark.parametrize("name", sorted(FP8_SHAPES))
def test_fused_fp8_moe_matches_reference_at_real_shapes(name: str, tokens: int, block: tuple[int, int] | None) -> None:
    """W8A8 experts through the fused Triton kernel vs the torch reference method (bf16 activations: a gate-up value
    rounded to the neighbouring bf16 can move its group's e4m3 scale, so the bound is on the relative norm)."""
    from sgl.core.ops.table import reference_ops
    from sgl.plugins.quant.fp8_moe import Fp8MoEMethod
    from sgl.plugins.quant.triton_fp8_moe import TritonFp8MoEMethod

    e, k, h, i = FP8_SHAPES[name]
    layer, scheme = _fp8_experts(e, h, i, block)
    x = torch.randn(tokens, h, device=DEV, dtype=BF16)
    topk = select_experts(torch.randn(tokens, e, device=DEV), RoutingConfig(top_k=k, num_experts=e, renormalize=True))
    fp8_dot = torch.cuda.get_device_capability() >= (8, 9)
    out = TritonFp8MoEMethod(scheme, fp16_dot=not fp8_dot).apply(layer, reference_ops(), x, topk.weights, topk.ids,
                                                                  "silu")
    ref = Fp8MoEMethod(scheme).apply(layer, reference_ops(), x, topk.weights, topk.ids, "silu")
    assert out.dtype == BF16
    assert float((out.float() - ref.float()).norm() / ref.float().norm()) < 2e-2


@pytest.mark.parametrize("name", sorted(FP8_SHAPES))
def test_fused_fp8_moe_decode_bandwidth(name: str) -> None:
    """Batch-1 decode with block-FP8 experts: prints GB/s against the active experts' fp8 bytes."""
    from sgl.core.ops.table import reference_ops
    from sgl.plugins.quant.triton_fp8_moe import TritonFp8MoEMethod

    e, k, h, i = FP8_SHAPES[name]
    layer, scheme = _fp8_experts(e, h, i, (128, 128))
    method = TritonFp8MoEMethod(scheme, fp16_dot=torch.cuda.get_device_capability() < (8, 9))
    x = torch.randn(1, h, device=DEV, dtype=BF16)
    topk = select_experts(torch.randn(1, e, device=DEV), RoutingConfig(top_k=k, num_experts=e, renormalize=True))
    ops = reference_ops()
    ms, eager_ms = _replayed_ms(lambda: method.apply(layer, ops, x, topk.weights, topk.ids, "silu"))
    bytes_read = k * 3 * h * i
    print(f"\n{name}: batch-1 fused FP8 MoE {ms * 1e3:.1f} us, {bytes_read / ms / 1e6:.0f} GB/s over the active experts "
          f"(graph-replayed; eager {eager_ms * 1e3:.1f} us)")
    assert ms > 0


QWEN3_30B = (128, 8, 2048, 768)  # experts, top_k, hidden, expert intermediate


@pytest.mark.parametrize("scheme_id", ["channel-token", "tensor-static"])
@pytest.mark.parametrize("tokens", [1, 16, 512])
def test_fused_per_row_fp8_moe_matches_reference_at_qwen3_30b_shapes(scheme_id: str, tokens: int) -> None:
    """compressed-tensors FP8 experts (RedHat's Qwen3-30B-A3B-FP8-dynamic: per-channel, per-token inputs; static
    per-tensor releases) through the kernel's per-row path vs the reference method; bound as the block test's."""
    from sgl.core.ops.table import reference_ops
    from sgl.plugins.quant.fp8_linear import Fp8Scheme
    from sgl.plugins.quant.fp8_moe import Fp8MoEMethod
    from sgl.plugins.quant.triton_fp8_moe import TritonFp8MoEMethod
    from tests.kernels.test_fused_moe_fp8 import _per_row_experts

    scheme = Fp8Scheme("channel", "token") if scheme_id == "channel-token" else Fp8Scheme("tensor", "static")
    e, k, h, i = QWEN3_30B
    layer = _per_row_experts(scheme, e, h, i, DEV, seed=1)
    for name, p in layer.named_parameters():
        if name.endswith("_input_scale"):
            p.data.fill_(0.02)  # NOTE: keeps unit-normal inputs and their gate-up products inside e4m3's range
    x = torch.randn(tokens, h, device=DEV, dtype=BF16)
    topk = select_experts(torch.randn(tokens, e, device=DEV), RoutingConfig(top_k=k, num_experts=e, renormalize=True))
    fp8_dot = torch.cuda.get_device_capability() >= (8, 9)
    out = TritonFp8MoEMethod(scheme, fp16_dot=not fp8_dot).apply(layer, reference_ops(), x, topk.weights, topk.ids,
                                                                  "silu")
    ref = Fp8MoEMethod(scheme).apply(layer, reference_ops(), x, topk.weights, topk.ids, "silu")
    assert float((out.float() - ref.float()).norm() / ref.float().norm()) < 2e-2


@pytest.mark.parametrize("fmt", ["awq-g128", "gptq-g128-desc-act"])
@pytest.mark.parametrize("tokens", [1, 16, 512])
def test_fused_int4_moe_matches_reference_at_qwen3_30b_shapes(fmt: str, tokens: int) -> None:
    """AWQ / GPTQ-Int4 Qwen3-30B-A3B experts (group 128): the tile rounds to bf16 before the dot, the reference
    keeps fp32 weights, so the bound is on the relative norm (a wrong nibble order or group gives ~1)."""
    from sgl.core.ops.table import reference_ops
    from sgl.plugins.quant.int4_linear import Int4Scheme
    from sgl.plugins.quant.int4_moe import Int4MoEMethod
    from sgl.plugins.quant.triton_int4_moe import TritonInt4MoEMethod
    from tests.kernels.test_fused_moe_int4 import _experts

    scheme = Int4Scheme("awq", 128) if fmt == "awq-g128" else Int4Scheme("gptq", 128, desc_act=True, zero_offset=1)
    e, k, h, i = QWEN3_30B
    layer = _experts(scheme, e, h, i, DEV, seed=2)
    x = torch.randn(tokens, h, device=DEV, dtype=BF16)
    topk = select_experts(torch.randn(tokens, e, device=DEV), RoutingConfig(top_k=k, num_experts=e, renormalize=True))
    out = TritonInt4MoEMethod(scheme).apply(layer, reference_ops(), x, topk.weights, topk.ids, "silu")
    ref = Int4MoEMethod(scheme).apply(layer, reference_ops(), x, topk.weights, topk.ids, "silu")
    assert out.dtype == BF16
    assert float((out.float() - ref.float()).norm() / ref.float().norm()) < 2e-2


def test_fused_int4_moe_decode_bandwidth() -> None:
    """Batch-1 decode with AWQ Qwen3-30B-A3B experts: prints GB/s against the active experts' packed bytes (half a
    byte a weight; scales and zeros not counted)."""
    from sgl.core.ops.table import reference_ops
    from sgl.plugins.quant.int4_linear import Int4Scheme
    from sgl.plugins.quant.triton_int4_moe import TritonInt4MoEMethod
    from tests.kernels.test_fused_moe_int4 import _experts

    scheme = Int4Scheme("awq", 128)
    e, k, h, i = QWEN3_30B
    layer = _experts(scheme, e, h, i, DEV, seed=3)
    method, ops = TritonInt4MoEMethod(scheme), reference_ops()
    x = torch.randn(1, h, device=DEV, dtype=BF16)
    topk = select_experts(torch.randn(1, e, device=DEV), RoutingConfig(top_k=k, num_experts=e, renormalize=True))
    ms, eager_ms = _replayed_ms(lambda: method.apply(layer, ops, x, topk.weights, topk.ids, "silu"))
    bytes_read = k * 3 * h * i // 2
    print(f"\nqwen3-30b-a3b-awq: batch-1 fused int4 MoE {ms * 1e3:.1f} us, {bytes_read / ms / 1e6:.0f} GB/s "
          f"(graph-replayed; eager {eager_ms * 1e3:.1f} us)")
    assert ms > 0
