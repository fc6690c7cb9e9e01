"""Finding torch_npu: whether it is installed, whether it imports, whether it sees an NPU, each with the reason.

NOTE: importing torch_npu registers the ``npu`` device and ``torch.npu``; nothing here imports it unless it is
installed, so a machine without it never sees an ImportError from this plugin.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType
from typing import NamedTuple


class NpuRuntime(NamedTuple):
    """torch_npu when it imports (else None), and why the platform cannot run (None when it can)."""

    module: ModuleType | None
    why: str | None


@functools.lru_cache(maxsize=1)
def npu_runtime() -> NpuRuntime:
    if importlib.util.find_spec("torch_npu") is None:
        return NpuRuntime(None, "torch_npu is not installed")
    try:
        module = importlib.import_module("torch_npu")
    except Exception as exc:  # noqa: BLE001 - a broken CANN install must read as "unavailable", not as a crash
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return NpuRuntime(None, f"torch_npu failed to import: {type(exc).__name__}: {first_line}")
    import torch

    npu = getattr(torch, "npu", None)
    if npu is None or not npu.is_available():
        return NpuRuntime(module, "torch_npu sees no Ascend NPU: check the driver and ASCEND_RT_VISIBLE_DEVICES")
    return NpuRuntime(module, None)


def torch_npu_op(name: str) -> object | None:
    """``torch_npu.<name>`` where this torch_npu has it; None lets the caller take the torch reference."""
    module = npu_runtime().module
    return getattr(module, name, None) if module is not None else None
