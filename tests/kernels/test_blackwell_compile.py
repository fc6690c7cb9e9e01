"""Every Triton kernel of sgl.kernels compiles for NVIDIA Blackwell (sm100, B200) here, without one (Triton's own
ptxas, ahead of time). Compiling is not running: no figure or correctness claim on Blackwell rests on this; it only
rules out kernels that would not build there."""

from __future__ import annotations

from tests.kernels.compiled_rows import compiled_rows


def test_every_kernel_compiles_for_sm100() -> None:
    failed = [r for r in compiled_rows("sm100") if not r["compiled"]]
    assert not failed, failed
