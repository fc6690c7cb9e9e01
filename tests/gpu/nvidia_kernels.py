"""What the modules that test compiled Triton kernels on an NVIDIA GPU need, checked once at their import."""

from __future__ import annotations

import os

import pytest
import torch


def require_compiled_kernels_on_nvidia() -> None:
    """Skips the calling module (at its import) without an NVIDIA GPU, under TRITON_INTERPRET (kernels decorated for
    the interpreter stay so in this process) or without triton."""
    if not torch.cuda.is_available() or torch.version.hip is not None:
        pytest.skip("needs an NVIDIA GPU", allow_module_level=True)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("kernels are decorated for the interpreter in this process; run tests/gpu on its own",
                    allow_module_level=True)
    pytest.importorskip("triton")
