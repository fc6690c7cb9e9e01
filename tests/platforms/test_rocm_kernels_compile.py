"""The portable Triton kernels that the rocm platform runs (every Triton kernel of sgl.kernels)
compile for AMD Instinct GPUs here, without one (Triton's AMD toolchain, ahead of time): MI300 (gfx942, FP8
weights as e4m3fnuz) and MI350 (gfx950). Compiling is not running: the rocm platform stays "not verified on
hardware"; this only rules out kernels that would not build."""

from __future__ import annotations

import pytest

from tests.kernels.compiled_rows import compiled_rows


@pytest.mark.parametrize("target", ["gfx942", "gfx950"])
def test_decode_path_kernels_compile_for_amd_instinct(target: str) -> None:
    failed = [r for r in compiled_rows(target) if not r["compiled"]]
    assert not failed, failed
