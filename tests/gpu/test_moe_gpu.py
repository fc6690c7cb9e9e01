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
