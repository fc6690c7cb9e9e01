"""Norm and gated-activation kernels agree with the torch reference ops."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from sgl.core.ops import reference
from sgl.kernels import add_rms_norm, gelu_tanh_and_mul, rms_norm, silu_and_mul

# NOTE: the interpreter rounds fp32 -> bf16 differently from torch in the last bit; one bf16 ulp is allowed.
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_reference_for_non_power_of_two_width(dtype: torch.dtype, device: torch.device) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, dtype=dtype, device=device) * 3
    w = torch.randn(96, dtype=dtype, device=device)
    out = rms_norm(x, w, 1e-6)
    ref = reference.rms_norm(x, w, 1e-6)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=TOL[dtype][0], rtol=TOL[dtype][1])


def test_rms_norm_reads_row_strided_input(device: torch.device) -> None:
    torch.manual_seed(1)
    base = torch.randn(4, 128, device=device)
    x = base[:, :64]  # a view whose rows are 128 apart
    w = torch.randn(64, device=device)
    torch.testing.assert_close(rms_norm(x, w, 1e-5), reference.rms_norm(x, w, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_returns_normed_sum_and_sum(dtype: torch.dtype, device: torch.device) -> None:
    torch.manual_seed(2)
    x = torch.randn(5, 80, dtype=dtype, device=device)
    r = torch.randn(5, 80, dtype=dtype, device=device)
    w = torch.randn(80, dtype=dtype, device=device)
    x0, r0 = x.clone(), r.clone()
    normed, summed = add_rms_norm(x, r, w, 1e-6)
    ref_normed, ref_summed = reference.add_rms_norm(x, r, w, 1e-6)
    torch.testing.assert_close(summed, ref_summed, atol=TOL[dtype][0], rtol=TOL[dtype][1])
    torch.testing.assert_close(normed, ref_normed, atol=TOL[dtype][0], rtol=TOL[dtype][1])
    assert torch.equal(x, x0) and torch.equal(r, r0), "inputs must not be modified"


def test_rms_norm_of_empty_batch_is_empty(device: torch.device) -> None:
    x = torch.empty(0, 32, device=device)
    assert rms_norm(x, torch.ones(32, device=device), 1e-6).shape == (0, 32)


# NOTE: the interpreter's numpy exp overflows to inf for very negative inputs of the sigmoid; the result is exact.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,ref_op", [(silu_and_mul, reference.silu_and_mul),
                                       (gelu_tanh_and_mul, reference.gelu_tanh_and_mul)],
                         ids=["silu", "gelu_tanh"])
def test_gated_activation_matches_reference(
    op: Callable[[torch.Tensor], torch.Tensor],
    ref_op: Callable[[torch.Tensor], torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    torch.manual_seed(3)
    # width 2 * 1100 spans two column blocks of the kernel, the second one partial
    x = torch.randn(3, 2, 2 * 1100, dtype=dtype, device=device) * 4
    out = op(x)
    ref = ref_op(x)
    assert out.shape == (3, 2, 1100)
    torch.testing.assert_close(out, ref, atol=TOL[dtype][0] * 4, rtol=TOL[dtype][1])
