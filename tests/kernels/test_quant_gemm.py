"""The FP8 and INT4 Triton GEMMs, and the linear methods built on them, compute what the torch reference methods
compute (small shapes; the interpreter on CPU, compiled on a GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgl.core.model.linear_method import ShardLayout, shard_layout
from sgl.kernels.fp8_gemm import Fp8GemmConfig, fp8_gemm
from sgl.kernels.int4_gemm import Int4GemmConfig, int4_gemm
from sgl.kernels.int4_skinny_gemm import Int4SkinnyConfig, int4_skinny_config, int4_skinny_gemm, max_block_k
from sgl.plugins.quant import fp8_math as fm
from sgl.plugins.quant.fp8_linear import Fp8LinearMethod, Fp8Scheme
from sgl.plugins.quant.int4_linear import Int4LinearMethod, Int4Scheme
from sgl.plugins.quant.triton_fp8 import TritonFp8LinearMethod
from sgl.plugins.quant.triton_int4 import TritonInt4LinearMethod


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    # NOTE: fp32 accumulation in a different order, one rounding to the output dtype
    ulp = {torch.bfloat16: 2**-7, torch.float16: 2**-10}.get(out.dtype, 1e-5)
    tol = ref.abs().max().item() * ulp
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=0)


@pytest.mark.parametrize(("m", "n", "k", "cfg"), [
    (3, 96, 256, Fp8GemmConfig(16, 32, 32, 2, 4, 2)),  # decode: 16-row tiles, split K
    (40, 70, 160, Fp8GemmConfig(32, 32, 32, 1, 4, 2)),  # prefill tiles, ragged N and K
    (150, 100, 64, Fp8GemmConfig(16, 32, 32, 1, 4, 1)),  # 10 row tiles: a full band of 8, then a band of 2
])
def test_fp8_gemm_block_scales_match_dequantized_product(
    m: int, n: int, k: int, cfg: Fp8GemmConfig, device: torch.device
) -> None:
    torch.manual_seed(m + n)
    w, w_scale = fm.quantize_blocks(torch.randn(n, k), (32, 32))
    x = torch.randn(m, k)
    xq, x_scale = fm.quantize_per_token_group(x, 32)
    ref = fm.fake_quantize_per_token_group(x, 32) @ (w.float() * fm.expand_blocks(w_scale, n, k, (32, 32))).T
    out = fp8_gemm(xq.to(device), w.to(device), w_scale.to(device), (32, 32), x_scale.to(device), 32,
                   out_dtype=torch.float32, config=cfg)
    _close(out.cpu(), ref)


@pytest.mark.parametrize("m", [2, 33])
def test_fp8_gemm_per_channel_weights_per_token_inputs_and_bias(m: int, device: torch.device) -> None:
    torch.manual_seed(m)
    n, k = 48, 128
    w, w_scale = fm.quantize_per_row(torch.randn(n, k))
    x, bias = torch.randn(m, k), torch.randn(n)
    xq, x_scale = fm.quantize_per_token_group(x, k)
    ref = fm.fake_quantize_per_token_group(x, k) @ (w.float() * w_scale).T + bias
    cfg = Fp8GemmConfig(16, 32, 64, 2, 4, 2) if m <= 16 else Fp8GemmConfig(32, 32, 64, 1, 4, 2)
    out = fp8_gemm(xq.to(device), w.to(device), w_scale.to(device), (1, k), x_scale.to(device), k,
                   bias.to(device), out_dtype=torch.float32, config=cfg)
    _close(out.cpu(), ref)


def test_fp8_gemm_weight_only_takes_float_inputs(device: torch.device) -> None:
    torch.manual_seed(1)
    w, w_scale = fm.quantize_per_row(torch.randn(64, 96))
    x = torch.randn(5, 96)
    out = fp8_gemm(x.to(device), w.to(device), w_scale.to(device), (1, 96), config=Fp8GemmConfig(16, 32, 32, 1, 4, 2))
    _close(out.cpu(), x @ (w.float() * w_scale).T)


def _awq_pack(ints: torch.Tensor) -> torch.Tensor:
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    words = torch.zeros(ints.shape[0], ints.shape[1] // 8, dtype=torch.int64)
    for c in range(ints.shape[1] // 8):
        for i in range(8):
            words[:, c] |= ints[:, c * 8 + order[i]].long() << (4 * i)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _int4_layer(fmt: str, k: int, n: int, group: int, desc_act: bool, seed: int) -> tuple[nn.Module, Int4Scheme]:
    """A layer with random packed words (every nibble pattern is a valid 4-bit weight)."""
    gen = torch.Generator().manual_seed(seed)
    scheme = Int4Scheme(fmt, group, desc_act, 1 if fmt == "gptq" else 0)  # type: ignore[arg-type]
    layer = nn.Module()
    layer.output_partition_sizes = [n]  # type: ignore[assignment]
    Int4LinearMethod(scheme).create_weights(layer, k, n, False, torch.float32)
    for name, p in layer.named_parameters():
        if p.dtype == torch.int32 and name != "g_idx":
            p.data.copy_(torch.randint(-2**31, 2**31 - 1, p.shape, generator=gen, dtype=torch.int64).to(torch.int32))
        elif name == "scales":
            p.data.copy_((torch.rand(p.shape, generator=gen) * 0.02 + 0.001).half())
    if fmt == "gptq":
        g_idx = torch.arange(k, dtype=torch.int32) // group
        if desc_act:
            g_idx = g_idx[torch.randperm(k, generator=gen)]
        layer.g_idx.data.copy_(g_idx)  # type: ignore[union-attr,operator]
    return layer, scheme


@pytest.mark.parametrize(("fmt", "desc_act"), [("awq", False), ("gptq", False), ("gptq", True)])
@pytest.mark.parametrize(("m", "cfg"), [(3, Int4GemmConfig(16, 32, 32, 2, 4, 2)),
                                        (37, Int4GemmConfig(32, 32, 32, 1, 4, 2))])
def test_int4_gemm_matches_the_reference_dequantization(
    fmt: str, desc_act: bool, m: int, cfg: Int4GemmConfig, device: torch.device
) -> None:
    k, n, group = 128, 72, 32
    layer, scheme = _int4_layer(fmt, k, n, group, desc_act, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(2))
    ref = Int4LinearMethod(scheme).apply(layer, x)
    layer.to(device)
    out = int4_gemm(x.to(device), layer.qweight, layer.qzeros, layer.scales, group, fmt == "awq",  # type: ignore
                    scheme.zero_offset, layer.g_idx if desc_act else None, config=cfg)  # type: ignore[arg-type]
    _close(out.cpu(), ref)


def test_awq_kernel_reads_autoawqs_nibble_order(device: torch.device) -> None:
    """One weight per nibble position: unpacking in plain order instead of AutoAWQ's would move every column."""
    k, n = 32, 8
    ints = torch.arange(n).repeat(k, 1)  # column c holds the value c
    layer = nn.Module()
    qweight = _awq_pack(ints).to(device)
    qzeros = torch.zeros(1, 1, dtype=torch.int32, device=device)
    scales = torch.ones(1, n, dtype=torch.float16, device=device)
    out = int4_gemm(torch.ones(1, k, device=device), qweight, qzeros, scales, k, True,
                    config=Int4GemmConfig(16, 16, 32, 1, 4, 2))
    assert out.cpu().flatten().tolist() == [float(k * c) for c in range(n)]
    del layer


@pytest.mark.parametrize("fmt", ["awq", "gptq"])
@pytest.mark.parametrize(("m", "gemv"), [(1, False), (1, True), (3, False), (16, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int4_skinny_gemm_matches_the_reference_dequantization(
    fmt: str, m: int, gemv: bool, dtype: torch.dtype, device: torch.device
) -> None:
    """bf16 and fp16 inputs take different exact encodings of the nibbles (2**7 + q, 2**10 + q), the one-row GEMV
    fp32's 2**23 + q; N = 72 and K = 160 leave partial tiles and an uneven split."""
    k, n, group = 160, 72, 32
    layer, scheme = _int4_layer(fmt, k, n, group, False, seed=m)
    gen = torch.Generator().manual_seed(4)
    x, bias = torch.randn(m, k, generator=gen).to(dtype), torch.randn(n, generator=gen)
    ref = Int4LinearMethod(scheme).apply(layer, x.float()) + bias
    layer.to(device)
    out = int4_skinny_gemm(x.to(device), layer.qweight, layer.qzeros, layer.scales, group,  # type: ignore[arg-type]
                           fmt == "awq", scheme.zero_offset, bias.to(dtype).to(device),
                           config=Int4SkinnyConfig(32, 32, 2, 4, 2, gemv))
    assert out.dtype == dtype and out.shape == (m, n)
    _close(out.cpu(), ref)


@pytest.mark.parametrize("gemv", [False, True])
def test_int4_skinny_gemm_reads_autoawqs_nibble_order_and_one_whole_group(gemv: bool, device: torch.device) -> None:
    k, n = 32, 16
    ints = torch.arange(n).remainder(16).repeat(k, 1)  # column c holds the value c % 16
    qweight = _awq_pack(ints).to(device)
    qzeros = torch.zeros(1, n // 8, dtype=torch.int32, device=device)
    scales = torch.ones(1, n, dtype=torch.float16, device=device)
    out = int4_skinny_gemm(torch.ones(1, k, device=device), qweight, qzeros, scales, k, True,
                           config=Int4SkinnyConfig(16, 32, 1, 4, 2, gemv))
    assert out.cpu().flatten().tolist() == [float(k * c) for c in range(n)]


def test_int4_skinny_k_steps_stay_inside_a_group() -> None:
    assert max_block_k(128, 4096) == 128 and max_block_k(64, 4096) == 64 and max_block_k(4096, 4096) == 128
    assert max_block_k(8, 4096) is None
    dev = torch.device("cpu")
    assert int4_skinny_config(4096, 4096, 128, dev).split_k == 1  # 64 programs >= 6 x 8 "multiprocessors"
    assert int4_skinny_config(256, 4096, 32, dev) == Int4SkinnyConfig(64, 32, 16, 4, 4)  # 4 columns x 16 splits
    from sgl.kernels.int4_skinny_gemm import int4_gemv_config

    assert int4_gemv_config(4096, 4096, 128, dev) == Int4SkinnyConfig(64, 128, 4, 4, 3, True)  # one row: the GEMV
    assert int4_gemv_config(4096, 256, 128, dev).split_k == 1  # each split still streams two K steps
    with pytest.raises(ValueError, match="block_k 64"):
        int4_skinny_gemm(torch.zeros(1, 64), torch.zeros(64, 1, dtype=torch.int32),
                         torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, 8), 32, True,
                         config=Int4SkinnyConfig(16, 64, 1, 4, 2))


def _fp8_layer(scheme: Fp8Scheme, k: int, n: int, method: Fp8LinearMethod | None = None) -> nn.Module:
    layer = nn.Module()
    layer.output_partition_sizes = [n // 2, n // 2]  # type: ignore[assignment]
    method = method or Fp8LinearMethod(scheme)
    method.create_weights(layer, k, n, True, torch.float32)
    gen = torch.Generator().manual_seed(5)
    dense = torch.randn(n, k, generator=gen)
    for name, p in layer.named_parameters():
        lay = shard_layout(p)
        if name == "weight" and p.dtype == fm.FP8:
            p.data.copy_((dense * 20).clamp(-400, 400).to(fm.FP8))
        elif name == "weight":
            p.data.copy_(dense)
        elif name == "bias":
            p.data.copy_(torch.randn(n, generator=gen))
        elif lay == ShardLayout(None, None, per_shard=True):
            p.data.copy_(torch.tensor([0.05, 0.07])[: p.numel()])
        else:
            p.data.copy_(torch.rand(p.shape, generator=gen) * 0.01 + 0.001)
    method.process_weights_after_loading(layer)
    return layer


@pytest.mark.parametrize("scheme", [
    Fp8Scheme("block", "group", (32, 32), scale_name="weight_scale_inv"),
    Fp8Scheme("channel", "token"),
    Fp8Scheme("tensor", "static"),
    Fp8Scheme("channel", "none"),
    Fp8Scheme("channel", "token", serialized=False),
], ids=["block", "channel-token", "tensor-static", "weight-only", "online"])
@pytest.mark.parametrize("m", [1, 4, 16, 24])  # <= 16 rows: sgl.kernels.fp8_skinny_gemm; beyond: fp8_gemm
def test_triton_fp8_method_matches_the_reference_method(scheme: Fp8Scheme, m: int, device: torch.device) -> None:
    layer = _fp8_layer(scheme, 96, 64)
    x = torch.randn(m, 96, generator=torch.Generator().manual_seed(m))
    ref = Fp8LinearMethod(scheme).apply(layer, x, layer.bias)  # type: ignore[arg-type]
    layer.to(device)
    fast = TritonFp8LinearMethod(scheme, scaled_mm=False, fp16_dot=False)
    _close(fast.apply(layer, x.to(device), layer.bias).cpu(), ref)  # type: ignore[arg-type]


@pytest.mark.parametrize("works", [True, False], ids=["call-works", "call-fails"])
def test_prefill_takes_scaled_mm_only_where_granted_and_the_call_works(
    works: bool, device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A platform grants scaled_mm; the load-time probe withdraws it where torch._scaled_mm raises. Only prefill-sized
    per-token products call it; decode rows stream, block scales stay on the Triton GEMM; either way the result is the
    reference's."""
    from sgl.plugins.quant import triton_fp8

    calls: list[int] = []

    def fake_scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                       out_dtype: torch.dtype) -> torch.Tensor:
        if not works:
            raise RuntimeError("row-wise scaling is not supported here")
        calls.append(a.shape[0])
        return ((a.float() * scale_a) @ (b.float() * scale_b)).to(out_dtype)

    monkeypatch.setattr(torch, "_scaled_mm", fake_scaled_mm)
    triton_fp8.scaled_mm_rowwise_works.cache_clear()
    scheme = Fp8Scheme("channel", "token", serialized=False)
    fast = TritonFp8LinearMethod(scheme, scaled_mm=True, fp16_dot=False)
    layer = _fp8_layer(scheme, 96, 64, fast)
    triton_fp8.scaled_mm_rowwise_works.cache_clear()
    assert fast.scaled_mm is works
    layer.to(device)
    for m in (24, 4):
        x = torch.randn(m, 96, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
        ref = Fp8LinearMethod(scheme).apply(layer.cpu(), x, layer.bias)  # type: ignore[arg-type]
        layer.to(device)
        _close(fast.apply(layer, x.to(device), layer.bias).cpu(), ref)  # type: ignore[arg-type]
    assert calls == ([32, 24] if works else [])  # the load-time probe, the 24-row prefill (4 rows stream)
    x = torch.randn(24, 256, dtype=torch.bfloat16)
    assert not fast._takes_scaled_mm(x, torch.ones(24, 2), 128, (128, 128))


@pytest.mark.parametrize(("fmt", "desc_act"), [("awq", False), ("gptq", False), ("gptq", True)])
@pytest.mark.parametrize("m", [1, 5, 16, 17])  # <= 16 rows in group order: int4_skinny_gemm; else int4_gemm
def test_triton_int4_method_matches_the_reference_method(
    fmt: str, desc_act: bool, m: int, device: torch.device
) -> None:
    layer, scheme = _int4_layer(fmt, 128, 64, 32, desc_act, seed=9)
    x = torch.randn(m, 128, generator=torch.Generator().manual_seed(3))
    ref = Int4LinearMethod(scheme).apply(layer, x)
    layer.to(device)
    _close(TritonInt4LinearMethod(scheme).apply(layer, x.to(device)).cpu(), ref)


def test_cuda_platform_picks_the_methods_kernel_path_and_falls_back_without_triton(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sgl.core.platform import Capabilities
    from sgl.plugins.cuda import platform as cuda
    from sgl.plugins.quant.awq import AwqMethod
    from sgl.plugins.quant.fp8 import Fp8Method

    fp8 = Fp8Method.from_config({})
    awq = AwqMethod.from_config({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"})
    hopper = Capabilities(triton=True, fp8=True, bf16=True)
    monkeypatch.setattr(cuda, "_probe_capabilities", lambda: hopper)
    monkeypatch.setattr(cuda, "_has_triton", lambda: True)
    method = cuda.CudaPlatform().linear_method(fp8)
    assert isinstance(method, TritonFp8LinearMethod) and method.scaled_mm and not method.fp16_dot
    assert isinstance(cuda.CudaPlatform().linear_method(awq), TritonInt4LinearMethod)
    ampere = Capabilities(triton=True, fp8=False, bf16=True)
    monkeypatch.setattr(cuda, "_probe_capabilities", lambda: ampere)
    method = cuda.CudaPlatform().linear_method(fp8)
    assert isinstance(method, TritonFp8LinearMethod) and not method.scaled_mm and method.fp16_dot
    monkeypatch.setattr(cuda, "_has_triton", lambda: False)
    method = cuda.CudaPlatform().linear_method(fp8)
    assert type(method) is Fp8LinearMethod
