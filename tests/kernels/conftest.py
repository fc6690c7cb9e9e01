"""Kernel tests run the Triton kernels under the interpreter on CPU tensors, or compiled where a GPU is present.

NOTE: TRITON_INTERPRET is read when a kernel is decorated, so it must be set before ``sgl.kernels`` is first
imported; without triton the whole folder is skipped at collection.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

# NOTE: find_spec, not import: importing triton here would decorate its own library functions before the flag is set.
if importlib.util.find_spec("triton") is None:
    collect_ignore_glob = ["test_*.py"]
elif not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def kernel_device() -> torch.device:
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return torch.device("cpu" if interpreted or not torch.cuda.is_available() else "cuda")


@pytest.fixture
def device() -> torch.device:
    return kernel_device()
