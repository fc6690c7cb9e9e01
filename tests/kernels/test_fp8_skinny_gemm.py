"""The fp8 weight-streaming decode GEMM rounds the activations exactly as the reference FP8 method does and agrees
with it (fp32 outputs within accumulation-order noise), for every activation scheme, block and per-row weight scales,
1 to 16 rows, ragged N and K."""

from __future__ import annotations

import pytest
import torch

from sgl.kernels.fp8_skinny_gemm import (
    ActQuant,
    Fp8SkinnyConfig,
    fp8_skinny_config,
    fp8_skinny_gemm,
    max_block_k,
)
from sgl.kernels.skinny_gemm import MAX_ROWS
from sgl.plugins.quant import fp8_math as fm


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    # NOTE: identical fp8 operands; only the fp32 summation order differs. One activation rounded differently would
    # move an output by ~2**-4 of one product term, far beyond this tolerance.
    torch.testing.assert_close(out.float(), ref.float(), atol=ref.abs().max().item() * 1e-5, rtol=0)


def _reference_input(x: torch.Tensor, act: ActQuant, group: int, static: torch.Tensor | None) -> torch.Tensor:
    if act == ActQuant.TOKEN:
        return fm.fake_quantize_per_token_group(x, x.shape[1])
    if act == ActQuant.GROUP:
        return fm.fake_quantize_per_token_group(x, group)
    if act == ActQuant.STATIC:
        assert static is not None
        return fm.fake_quantize_static(x, static)
    return x.float()


CASES = {  # id: (act, blocked weights, N, K, config)
    "token-channel": (ActQuant.TOKEN, False, 70, 203, Fp8SkinnyConfig(32, 64, 2, 4, 2)),
    "group-block": (ActQuant.GROUP, True, 70, 200, Fp8SkinnyConfig(32, 32, 3, 4, 2)),
    "static-channel": (ActQuant.STATIC, False, 45, 160, Fp8SkinnyConfig(16, 32, 1, 4, 2)),
    "weight-only": (ActQuant.NONE, False, 70, 203, Fp8SkinnyConfig(32, 64, 2, 4, 2)),
    "token-block": (ActQuant.TOKEN, True, 33, 96, Fp8SkinnyConfig(16, 32, 1, 4, 2)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("m", "gemv"), [(1, False), (1, True), (3, False), (16, False)])
def test_fp8_skinny_gemm_matches_the_reference_product(case: str, m: int, gemv: bool, device: torch.device) -> None:
    act, blocked, n, k, cfg = CASES[case]
    cfg = cfg._replace(gemv=gemv)
    gen = torch.Generator().manual_seed(m * 7 + n)
    dense = torch.randn(n, k, generator=gen)
    if blocked:
        w, w_scale = fm.quantize_blocks(dense, (32, 32))
        w_group, w_ref = (32, 32), w.float() * fm.expand_blocks(w_scale, n, k, (32, 32))
    else:
        w, w_scale = fm.quantize_per_row(dense)
        w_group, w_ref = (1, k), w.float() * w_scale
    x = torch.randn(m, k, generator=gen)
    bias = torch.randn(n, generator=gen)
    static = torch.tensor([0.013]) if act == ActQuant.STATIC else None
    ref = _reference_input(x, act, 32, static) @ w_ref.T + bias
    out = fp8_skinny_gemm(x.to(device), w.to(device), w_scale.to(device), w_group, act, 32,
                          None if static is None else static.to(device), bias.to(device), config=cfg)
    assert out.shape == (m, n) and out.dtype == torch.float32
    _close(out.cpu(), ref)


def test_activation_rounding_is_the_references_across_a_wide_range(device: torch.device) -> None:
    """Values from fp8 subnormals to the row maximum, and ties: each must round (to nearest, ties to even) as torch
    rounds it, including where rounding up carries into the next power of two."""
    gen = torch.Generator().manual_seed(11)
    k, n = 128, 16
    x = torch.randn(4, k, generator=gen) * torch.exp(torch.randn(4, k, generator=gen) * 3)
    x[0, :8] = torch.tensor([7.96, -7.96, 15.9, 0.0019, -0.0021, 0.0, 3.125, 448.0])  # carries, subnormals, a tie
    w, w_scale = fm.quantize_per_row(torch.randn(n, k, generator=gen))
    eye = torch.eye(k)[:n]  # y[:, j] = x[:, j] as the kernel rounded it (times 1)
    ones = torch.ones(n, 1)
    for act in (ActQuant.TOKEN, ActQuant.STATIC):
        static = torch.tensor([1.0]) if act == ActQuant.STATIC else None
        out = fp8_skinny_gemm(x.to(device), eye.to(fm.FP8).to(device), ones.to(device), (1, k), act, 0,
                              None if static is None else static.to(device), config=Fp8SkinnyConfig(16, 32, 1, 4, 2))
        ref = _reference_input(x, act, 0, static)[:, :n]
        assert torch.equal(out.cpu(), ref), act
        for row in range(x.shape[0]):  # the one-row GEMV rounds as the reference does too
            one = fp8_skinny_gemm(x[row : row + 1].to(device), eye.to(fm.FP8).to(device), ones.to(device), (1, k),
                                  act, 0, None if static is None else static.to(device),
                                  config=Fp8SkinnyConfig(16, 32, 1, 4, 2, gemv=True))
            assert torch.equal(one.cpu(), ref[row : row + 1]), (act, row)
    del w, w_scale


def test_fnuz_weights_round_activations_into_fnuz(device: torch.device) -> None:
    """AMD MI300's e4m3 (max 240, subnormals below 2**-7): x is rounded into the weight's encoding, as the reference
    method does with the platform's fp8 dtype."""
    gen = torch.Generator().manual_seed(8)
    n, k = 40, 203
    w, w_scale = fm.quantize_per_row(torch.randn(n, k, generator=gen), fm.FNUZ)
    x = torch.randn(3, k, generator=gen) * torch.exp(torch.randn(3, k, generator=gen) * 2)
    ref = fm.fake_quantize_per_token_group(x, k, fm.FNUZ) @ (w.float() * w_scale).T
    out = fp8_skinny_gemm(x.to(device), w.to(device), w_scale.to(device), (1, k), ActQuant.TOKEN,
                          config=Fp8SkinnyConfig(32, 64, 2, 4, 2))
    _close(out.cpu(), ref)


def test_rows_do_not_depend_on_the_other_rows(device: torch.device) -> None:
    """Per-token scales are per row: a batch padded to a captured graph size agrees with it eager, row for row."""
    gen = torch.Generator().manual_seed(3)
    w, w_scale = fm.quantize_per_row(torch.randn(48, 128, generator=gen))
    x = torch.randn(3, 128, generator=gen)
    padded = torch.cat([x, 100 * torch.randn(2, 128, generator=gen)])
    cfg = Fp8SkinnyConfig(16, 32, 2, 4, 2)
    args = (w.to(device), w_scale.to(device), (1, 128), ActQuant.TOKEN)
    full = fp8_skinny_gemm(padded.to(device), *args, config=cfg)
    assert torch.equal(fp8_skinny_gemm(x.to(device), *args, config=cfg), full[:3])
    # batch 1 rounds one row, not 16: the same values as row 0 of the padded batch
    assert torch.equal(fp8_skinny_gemm(x[:1].to(device), *args, config=cfg), full[:1])


def test_refuses_what_it_cannot_compute(device: torch.device) -> None:
    w, s = torch.zeros(32, 64, dtype=fm.FP8, device=device), torch.ones(32, 1, device=device)
    with pytest.raises(ValueError, match="at most 16 rows"):
        fp8_skinny_gemm(torch.zeros(MAX_ROWS + 1, 64, device=device), w, s, (1, 64), ActQuant.TOKEN)
    with pytest.raises(ValueError, match="x_scale"):
        fp8_skinny_gemm(torch.zeros(2, 64, device=device), w, s, (1, 64), ActQuant.STATIC)
    with pytest.raises(ValueError, match="block_k 64"):
        fp8_skinny_gemm(torch.zeros(2, 64, device=device), w, s, (1, 64), ActQuant.GROUP, 32,
                        config=Fp8SkinnyConfig(16, 64, 1, 4, 2))


def test_k_steps_follow_the_scale_groups() -> None:
    assert max_block_k(4096, 4096, ActQuant.TOKEN) == 256  # per-row weights: free
    assert max_block_k(4096, 128, ActQuant.GROUP, 128) == 128  # block-wise checkpoints: the group
    assert max_block_k(4096, 128, ActQuant.TOKEN) == 128
    assert max_block_k(4096, 96, ActQuant.NONE) == 32
    assert max_block_k(4096, 128, ActQuant.GROUP, 96) is None  # an activation group no power-of-two step matches
    assert max_block_k(4096, 24, ActQuant.NONE) is None


def test_config_prefers_more_programs_to_splitting_k() -> None:
    dev = torch.device("cpu")  # 8 "multiprocessors" off-device (sgl.kernels._common.sm_count)
    assert fp8_skinny_config(4096, 4096, 256, dev) == Fp8SkinnyConfig(64, 256, 1, 4, 4)
    assert fp8_skinny_config(256, 4096, 256, dev).block_n == 32 and fp8_skinny_config(256, 4096, 256, dev).split_k == 2
    assert fp8_skinny_config(256, 4096, 128, dev).block_k == 128
    assert fp8_skinny_config(64, 512, 256, dev).split_k == 1  # K too short to split


def test_the_fp8_method_streams_decode_sizes_and_keeps_the_general_gemm_beyond(
    monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    from torch import nn

    from sgl.plugins.quant import triton_fp8
    from sgl.plugins.quant.fp8_linear import Fp8Scheme

    calls: list[int] = []
    general = triton_fp8.fp8_gemm

    def counted(a: torch.Tensor, *rest: object, **kw: object) -> torch.Tensor:
        calls.append(a.shape[0])
        return general(a, *rest, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(triton_fp8, "fp8_gemm", counted)
    layer = nn.Module()
    w, s = fm.quantize_per_row(torch.randn(40, 64, generator=torch.Generator().manual_seed(1)))
    layer.weight, layer.weight_scale = nn.Parameter(w.to(device), False), nn.Parameter(s.to(device), False)
    method = triton_fp8.TritonFp8LinearMethod(Fp8Scheme("channel", "token", serialized=False), False, False)
    for m in (1, MAX_ROWS, MAX_ROWS + 1):
        method.apply(layer, torch.randn(m, 64, device=device))
    assert calls == [MAX_ROWS + 1]


def test_one_row_without_a_config_takes_the_gemv_kernel_for_per_row_scales_only(device: torch.device) -> None:
    from sgl.kernels.fp8_skinny_gemm import fp8_gemv_config

    cpu = torch.device("cpu")
    assert fp8_gemv_config(4096, 4096, 256, cpu).gemv and fp8_gemv_config(28672, 4096, 256, cpu).block_n == 64
    gen = torch.Generator().manual_seed(5)
    w, w_scale = fm.quantize_per_row(torch.randn(40, 512, generator=gen))
    x = torch.randn(1, 512, generator=gen)
    ref = fm.fake_quantize_per_token_group(x, 512) @ (w.float() * w_scale).T
    _close(fp8_skinny_gemm(x.to(device), w.to(device), w_scale.to(device), (1, 512), ActQuant.TOKEN).cpu(), ref)
