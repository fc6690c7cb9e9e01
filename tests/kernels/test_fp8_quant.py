"""sgl.kernels.fp8_quant against the torch reference it replaces for prefill-sized inputs."""

from __future__ import annotations

import pytest
import torch

from sgl.kernels.fp8_quant import fp8_quantize_per_token_group
from sgl.plugins.quant import fp8_math as fm


@pytest.mark.parametrize(("k", "group"), [(4096, 4096), (1000, 1000), (2304, 128), (300, 128), (3000, 2048)])
@pytest.mark.parametrize("dtype", [fm.FP8, fm.FNUZ])
def test_fused_per_token_group_quant_equals_the_reference(
    k: int, group: int, dtype: torch.dtype, device: torch.device
) -> None:
    """Same e4m3 bytes and scales as fp8_math.quantize_per_token_group, wide dynamic range (subnormals, carries,
    zero rows) and partial chunks and groups included. NOTE: values, not bytes: the interpreter's exact-rounding
helper turns -0 into +0 (a compiled kernel's cvt keeps the sign), which no product can see."""
    torch.manual_seed(0)
    x = (torch.randn(5, k) * torch.exp(torch.randn(5, k) * 3)).to(device, torch.bfloat16)
    x[2] = 0
    q, s = fp8_quantize_per_token_group(x, group, dtype)
    rq, rs = fm.quantize_per_token_group(x, group, dtype)
    assert torch.equal(s, rs)
    assert q.dtype == dtype and torch.equal(q.float(), rq.float())
