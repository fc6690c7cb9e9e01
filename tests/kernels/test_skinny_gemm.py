"""The weight-streaming small-M GEMM agrees with F.linear (fp32 reference) at every row count it takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgl.kernels.skinny_gemm import MAX_ROWS, SkinnyConfig, skinny_config, skinny_gemm


def _reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.float(), w.float(), None if bias is None else bias.float())


@pytest.mark.parametrize(("m", "n", "k", "split"), [(1, 100, 300, 1), (3, 64, 1024, 4), (16, 48, 512, 2),
                                                    (5, 70, 200, 2), (2, 130, 128, 1)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_skinny_gemm_matches_f_linear(
    m: int, n: int, k: int, split: int, with_bias: bool, device: torch.device
) -> None:
    torch.manual_seed(m * 31 + n)
    x = torch.randn(m, k, dtype=torch.bfloat16, device=device)
    w = torch.randn(n, k, dtype=torch.bfloat16, device=device)
    bias = torch.randn(n, dtype=torch.bfloat16, device=device) if with_bias else None
    out = skinny_gemm(x, w, bias, SkinnyConfig(32, 128, split, 4, 2))
    ref = _reference(x, w, bias)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    # NOTE: fp32 accumulation, one bf16 rounding of the output: within a bf16 ulp of the largest value
    torch.testing.assert_close(out.float(), ref, atol=ref.abs().max().item() * 2**-7, rtol=0)


def test_rows_do_not_depend_on_the_other_rows(device: torch.device) -> None:
    """A batch padded to a captured graph size and the same batch eager must agree row for row."""
    torch.manual_seed(3)
    x = torch.randn(3, 256, dtype=torch.bfloat16, device=device)
    w = torch.randn(96, 256, dtype=torch.bfloat16, device=device)
    padded = torch.cat([x, torch.randn(1, 256, dtype=torch.bfloat16, device=device)])
    cfg = SkinnyConfig(32, 128, 2, 4, 2)
    assert torch.equal(skinny_gemm(x, w, config=cfg), skinny_gemm(padded, w, config=cfg)[:3])


def test_rejects_more_rows_than_it_takes(device: torch.device) -> None:
    x = torch.zeros(MAX_ROWS + 1, 64, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match="at most 16 rows"):
        skinny_gemm(x, torch.zeros(32, 64, dtype=torch.bfloat16, device=device))


def test_config_splits_k_only_while_programs_are_few() -> None:
    dev = torch.device("cpu")  # 8 "multiprocessors" off-device (sgl.kernels._common.sm_count)
    assert skinny_config(4096, 4096, dev).split_k == 1  # 64 programs already >= 1.5 x 8
    assert skinny_config(256, 4096, dev).split_k == 4  # 4 programs: split until 16 >= 12
    assert skinny_config(64, 256, dev).split_k == 1  # K too short to split
