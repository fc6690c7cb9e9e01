"""The rocm platform forced onto the NVIDIA GPU (test-only SGL_TEST_ROCM_ON_CUDA=1) serves the demo model with the
Triton path, graphs on and off, with tokens equal to the cuda platform's. It exercises the rocm platform's own code
through the shared Triton pieces; it proves nothing about AMD hardware (docs/hardware.md)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

if not torch.cuda.is_available() or torch.version.hip is not None:
    pytest.skip("needs an NVIDIA GPU and a CUDA build of torch", allow_module_level=True)

from benchmarks.rocm_on_nvidia import VARIANTS, _greedy

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rocm_platform_on_nvidia_gives_the_cuda_platforms_tokens(monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    monkeypatch.setenv("SGL_TEST_ROCM_ON_CUDA", "1")
    want, cuda_info = _greedy("demo", "cuda", VARIANTS[variant])
    got, rocm_info = _greedy("demo", "rocm", VARIANTS[variant])
    info: dict[str, Any] = rocm_info
    assert (info["platform"], info["attention_backend"]) == ("rocm", "triton")
    assert cuda_info["platform"] == "cuda"
    assert got == want
