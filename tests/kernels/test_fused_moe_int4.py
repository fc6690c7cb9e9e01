"""The fused W4A16 MoE (sgl.kernels.fused_moe_int4, through the quant plugin's Triton MoE method) computes what the
reference int4 MoE method computes (the experts hit dequantized, then the core's reference MoE): AWQ's interleaved
and GPTQ's row-packed words, v1 zeros, act-order groups, other ranks' expert ids."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgl.core.ops.table import reference_ops
from sgl.plugins.quant.int4_linear import Int4Scheme
from sgl.plugins.quant.int4_moe import Int4MoEMethod
from sgl.plugins.quant.triton_int4_moe import TritonInt4MoEMethod

SCHEMES = {
    "awq-g16": Int4Scheme("awq", 16),
    "gptq-g16": Int4Scheme("gptq", 16, zero_offset=1),
    "gptq-desc-act": Int4Scheme("gptq", 16, desc_act=True),
    "gptq-one-group": Int4Scheme("gptq", -1, zero_offset=1),
}


def _experts(scheme: Int4Scheme, e: int, h: int, i: int, device: torch.device, seed: int) -> nn.Module:
    """Random packed words and zeros, scales ~0.02, and under act order a random permutation of groups per expert."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Module()
    with torch.device(device):
        Int4MoEMethod(scheme).create_weights(layer, e, h, i, torch.float32)
    for name, p in layer.named_parameters():
        if name.endswith(("qweight", "qzeros")):
            p.data.copy_(torch.randint(-2**31, 2**31, p.shape, generator=g, dtype=torch.int64).to(torch.int32))
        elif name.endswith("scales"):
            p.data.copy_((0.01 + 0.02 * torch.rand(p.shape, generator=g)).half())
        elif name.endswith("g_idx"):
            rows = p.shape[1]
            size = layer.int4_groups[name.split("_")[0]]
            for x in range(e):
                row = torch.empty(rows, dtype=torch.int32)  # NOTE: built on the CPU generator's side, then copied
                row[torch.randperm(rows, generator=g)] = (torch.arange(rows) // size).to(torch.int32)
                p.data[x].copy_(row)
    return layer


@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("t,e,k,h,i", [(1, 4, 2, 64, 32), (11, 8, 3, 48, 48)])
def test_int4_experts_match_the_reference(name: str, t: int, e: int, k: int, h: int, i: int,
                                          device: torch.device) -> None:
    scheme = SCHEMES[name]
    layer = _experts(scheme, e, h, i, device, seed=t + e)
    g = torch.Generator().manual_seed(t)
    x = torch.randn(t, h, generator=g).to(device)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(device)
    weights = torch.rand(t, k, generator=g).to(device)
    ids[::3, 0] = -1
    ops = reference_ops()
    fast = TritonInt4MoEMethod(scheme).apply(layer, ops, x, weights, ids, "silu")
    ref = Int4MoEMethod(scheme).apply(layer, ops, x, weights, ids, "silu")
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    assert ref.abs().max() > 0.1  # NOTE: not a product of zeros


def test_bf16_int4_experts_match_the_reference(device: torch.device) -> None:
    """bf16 activations: the tile rounds to bf16 before the dot (the reference keeps fp32 weights), so the bound is a
    relative norm far below what a wrong nibble order or group gives (~1)."""
    scheme = SCHEMES["awq-g16"]
    layer = _experts(scheme, 4, 64, 32, device, seed=5)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 64, generator=g).to(device, torch.bfloat16)
    ids = torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(6)]).to(device)
    weights = torch.rand(6, 2, generator=g).to(device)
    fast = TritonInt4MoEMethod(scheme).apply(layer, reference_ops(), x, weights, ids, "silu")
    ref = Int4MoEMethod(scheme).apply(layer, reference_ops(), x, weights, ids, "silu")
    assert fast.dtype == torch.bfloat16
    assert float((fast.float() - ref.float()).norm() / ref.float().norm()) < 3e-2


def test_cuda_platform_picks_each_methods_fused_moe_and_the_reference_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AWQ/GPTQ experts take the fused int4 MoE, compressed-tensors ones the fused FP8 MoE, NVFP4 ones the reference
    (no kernel); without Triton every method's reference runs."""
    from sgl.core.platform import Capabilities
    from sgl.plugins.cuda import platform as cuda
    from sgl.plugins.quant.awq import AwqMethod
    from sgl.plugins.quant.compressed_tensors import CompressedTensorsMethod
    from sgl.plugins.quant.gptq import GptqMethod
    from sgl.plugins.quant.nvfp4 import ModelOptMethod
    from sgl.plugins.quant.nvfp4_moe import NvFp4MoEMethod
    from sgl.plugins.quant.triton_fp8_moe import TritonFp8MoEMethod
    from tests.quant.test_fp8 import TOKEN_INPUTS, ct_config

    awq = AwqMethod.from_config({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"})
    gptq = GptqMethod.from_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True})
    ct = CompressedTensorsMethod.from_config(ct_config("channel", TOKEN_INPUTS))
    fp4 = ModelOptMethod.from_config({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16})
    monkeypatch.setattr(cuda, "_probe_capabilities", lambda: Capabilities(triton=True, fp8=True, bf16=True))
    monkeypatch.setattr(cuda, "_has_triton", lambda: True)
    assert isinstance(cuda.CudaPlatform().moe_method(awq), TritonInt4MoEMethod)
    assert isinstance(cuda.CudaPlatform().moe_method(gptq), TritonInt4MoEMethod)
    assert isinstance(cuda.CudaPlatform().moe_method(ct), TritonFp8MoEMethod)
    assert type(cuda.CudaPlatform().moe_method(fp4)) is NvFp4MoEMethod
    monkeypatch.setattr(cuda, "_has_triton", lambda: False)
    assert type(cuda.CudaPlatform().moe_method(gptq)) is Int4MoEMethod
