"""The fused Triton FP8 MoE (sgl.kernels.fused_moe.fused_moe_fp8, through the quant plugin's Triton MoE method)
computes what the reference FP8 MoE method computes: dequantized expert weights, inputs rounded through e4m3 per
token (group), the core's reference MoE. Both see the same e4m3 activations, so fp32 inputs agree to fp32 rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgl.core.ops.table import reference_ops
from sgl.plugins.quant import fp8_math as fm
from sgl.plugins.quant.fp8_linear import Fp8Scheme
from sgl.plugins.quant.fp8_moe import Fp8MoEMethod
from sgl.plugins.quant.triton_fp8_moe import TritonFp8MoEMethod

BLOCK = Fp8Scheme("block", "group", (16, 32), scale_name="weight_scale_inv")  # NOTE: not square: a swap shows
ONLINE = Fp8Scheme("channel", "token", serialized=False)


def _experts(scheme: Fp8Scheme, e: int, h: int, i: int, device: torch.device, seed: int) -> nn.Module:
    """A layer holding ``e`` random experts in the scheme's layout (block-quantized by fp8_math, or online)."""
    g = torch.Generator().manual_seed(seed)
    dense = {"w13": torch.randn(e, 2 * i, h, generator=g) / h**0.5, "w2": torch.randn(e, h, i, generator=g) / i**0.5}
    layer = nn.Module()
    method = Fp8MoEMethod(scheme)
    with torch.device(device):
        method.create_weights(layer, e, h, i, torch.float32)
    for group, w in dense.items():
        if scheme.serialized:
            assert scheme.block is not None
            parts = [fm.quantize_blocks(w[x], scheme.block) for x in range(e)]
            getattr(layer, f"{group}_weight").data.copy_(torch.stack([q for q, _ in parts]))
            getattr(layer, f"{group}_weight_scale_inv").data.copy_(torch.stack([s for _, s in parts]))
        else:
            getattr(layer, f"{group}_weight").data.copy_(w)
    method.process_weights_after_loading(layer)
    return layer


def _routing(t: int, e: int, k: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
    return torch.rand(t, k, generator=g).to(device), ids.to(device)


def _both(scheme: Fp8Scheme, layer: nn.Module, x: torch.Tensor, weights: torch.Tensor,
          ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ops = reference_ops()
    fast = TritonFp8MoEMethod(scheme).apply(layer, ops, x, weights, ids, "silu")
    ref = Fp8MoEMethod(scheme).apply(layer, ops, x, weights, ids, "silu")
    return fast, ref


@pytest.mark.parametrize("t,e,k,h,i", [(1, 4, 2, 64, 32), (7, 8, 3, 80, 48), (33, 4, 2, 64, 32)])
def test_block_fp8_experts_match_the_reference(t: int, e: int, k: int, h: int, i: int, device: torch.device) -> None:
    """H = 80 and I = 48 leave partial 32-feature blocks along K; some pairs name another rank's expert (-1)."""
    layer = _experts(BLOCK, e, h, i, device, seed=t)
    x = torch.randn(t, h, generator=torch.Generator().manual_seed(t + 1)).to(device)
    weights, ids = _routing(t, e, k, device, seed=t + 2)
    ids[::3, 0] = -1
    fast, ref = _both(BLOCK, layer, x, weights, ids)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_online_fp8_experts_match_the_reference(device: torch.device) -> None:
    layer = _experts(ONLINE, 4, 48, 40, device, seed=3)
    x = torch.randn(9, 48, generator=torch.Generator().manual_seed(4)).to(device)
    weights, ids = _routing(9, 4, 2, device, seed=5)
    fast, ref = _both(ONLINE, layer, x, weights, ids)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_bf16_inputs_and_other_ranks_experts(device: torch.device) -> None:
    """bf16 activations; ids outside [0, E) add nothing.

    NOTE: both store the gate-up output in bf16, but the interpreter casts fp32 to bf16 by truncation (a device rounds
    to nearest), and a bf16 step in a group's largest value moves that group's e4m3 scale: outputs then differ by a
    few bf16 steps. The bound is on the relative norm, far below a misread scale's (~1); fp32 pins the layout."""
    layer = _experts(BLOCK, 4, 64, 32, device, seed=7)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(8)).to(device, torch.bfloat16)
    weights, ids = _routing(6, 4, 2, device, seed=9)
    ids[::2, 1] = -1
    fast, ref = _both(BLOCK, layer, x, weights, ids)
    assert fast.dtype == torch.bfloat16
    assert float((fast.float() - ref.float()).norm() / ref.float().norm()) < 5e-2
    assert (ref[::2].float() - Fp8MoEMethod(BLOCK).apply(layer, reference_ops(), x[::2], weights[::2, :1], ids[::2, :1],
                                                         "silu").float()).abs().max() == 0


def test_the_reference_is_the_dequantized_moe_on_e4m3_rounded_inputs() -> None:
    """Pins the reference's arithmetic independently: per expert, x rounded per token and 32 features, times the
    block-dequantized gate-up; silu; rounded again; times the dequantized down; weighted and summed."""
    e, h, i, t = 4, 64, 32, 5
    layer = _experts(BLOCK, e, h, i, torch.device("cpu"), seed=11)
    x = torch.randn(t, h, generator=torch.Generator().manual_seed(12))
    weights, ids = _routing(t, e, 2, torch.device("cpu"), seed=13)
    out = Fp8MoEMethod(BLOCK).apply(layer, reference_ops(), x, weights, ids, "silu")

    def deq(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return q.float() * s.repeat_interleave(16, 0)[: q.shape[0]].repeat_interleave(32, 1)[:, : q.shape[1]]

    expected = torch.zeros(t, h)
    for tok in range(t):
        for j in range(2):
            x_ = ids[tok, j].item()
            w13 = deq(layer.w13_weight[x_], layer.w13_weight_scale_inv[x_])
            w2 = deq(layer.w2_weight[x_], layer.w2_weight_scale_inv[x_])
            gu = fm.fake_quantize_per_token_group(x[tok : tok + 1], 32) @ w13.T
            hid = torch.nn.functional.silu(gu[:, :i]) * gu[:, i:]
            expected[tok] += weights[tok, j] * (fm.fake_quantize_per_token_group(hid, 32) @ w2.T)[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # NOTE: and e4m3 rounding is not a no-op here: the unrounded product differs
    plain = torch.zeros(t, h)
    for tok in range(t):
        for j in range(2):
            x_ = ids[tok, j].item()
            w13 = deq(layer.w13_weight[x_], layer.w13_weight_scale_inv[x_])
            w2 = deq(layer.w2_weight[x_], layer.w2_weight_scale_inv[x_])
            gu = x[tok : tok + 1] @ w13.T
            plain[tok] += weights[tok, j] * ((torch.nn.functional.silu(gu[:, :i]) * gu[:, i:]) @ w2.T)[0]
    assert (plain - out).abs().max() > 1e-4


def _per_row_experts(scheme: Fp8Scheme, e: int, h: int, i: int, device: torch.device, seed: int) -> nn.Module:
    """Experts in a compressed-tensors layout: per-channel scales, or per-tensor ones that differ between gate and up
    (so spreading them over the wrong rows shows); static input scales differ per expert."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Module()
    method = Fp8MoEMethod(scheme)
    with torch.device(device):
        method.create_weights(layer, e, h, i, torch.float32)
    for group, rows, cols, slices in (("w13", 2 * i, h, 2), ("w2", h, i, 1)):
        w = torch.randn(e, rows, cols, generator=g) / cols**0.5
        if scheme.weight == "channel":
            scale = w.abs().amax(dim=2, keepdim=True) / 448
        else:
            scale = torch.stack([p.abs().amax(dim=(1, 2)) for p in w.chunk(slices, dim=1)], dim=1) / 448
        full = scale if scheme.weight == "channel" else scale.repeat_interleave(rows // slices, 1).unsqueeze(-1)
        getattr(layer, f"{group}_weight").data.copy_((w / full).to(fm.FP8))
        getattr(layer, f"{group}_weight_scale").data.copy_(scale)
        if scheme.activation == "static":
            getattr(layer, f"{group}_input_scale").data.copy_(0.01 + 0.002 * torch.rand(e, slices, generator=g))
    method.process_weights_after_loading(layer)
    return layer


@pytest.mark.parametrize("scheme", [Fp8Scheme("channel", "token"), Fp8Scheme("tensor", "static"),
                                    Fp8Scheme("tensor", "token"), Fp8Scheme("channel", "none")],
                         ids=["channel-token", "tensor-static", "tensor-token", "channel-weight-only"])
def test_per_row_fp8_experts_match_the_reference(scheme: Fp8Scheme, device: torch.device) -> None:
    """compressed-tensors and per-tensor FP8 experts: the kernel's per-row path (a per-tensor scale is that row
    scale repeated), static inputs by one scale per GEMM, weight-only inputs unrounded; ids of other ranks (-1)."""
    layer = _per_row_experts(scheme, 4, 48, 40, device, seed=21)
    x = torch.randn(9, 48, generator=torch.Generator().manual_seed(22)).to(device)
    weights, ids = _routing(9, 4, 2, device, seed=23)
    ids[::4, 1] = -1
    fast, ref = _both(scheme, layer, x, weights, ids)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    if scheme.activation == "static":
        assert layer.w13_input_scale.shape == (1,) and layer.w13_weight_scale.shape == (4, 80, 1)
