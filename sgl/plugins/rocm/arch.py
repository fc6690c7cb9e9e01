"""What an AMD GPU architecture decides: its FP8 encoding and whether AMD's aiter kernels run on it.

Pure functions of the gfx name (``gcnArchName`` of the device, e.g. ``gfx942:sramecc+:xnack-``), so the choices are
tested without the device.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import NamedTuple

import torch

FP8_BY_ARCH: dict[str, torch.dtype] = {
    "gfx942": torch.float8_e4m3fnuz,  # MI300X / MI300A / MI325X: the "fnuz" e4m3 (bias 8, no -0, max 240)
    "gfx950": torch.float8_e4m3fn,  # MI350X / MI355X: the OCP e4m3, as on NVIDIA
}
"""Architectures with FP8 matmuls, and the e4m3 encoding their hardware computes in."""

AITER_ARCHS = frozenset({"gfx942", "gfx950"})
"""Architectures AMD's aiter kernels are built for (its decode attention and norms)."""

AITER_FUNCTIONS = ("paged_attention_ragged", "rms_norm", "rmsnorm2d_fwd_with_add")
"""What sgl calls in aiter; the unrelated PyPI package named ``aiter`` has none of them."""


def gfx_name(arch: str) -> str:
    """``gfx942:sramecc+:xnack-`` -> ``gfx942`` (feature flags dropped)."""
    return arch.split(":", 1)[0].strip().lower()


def fp8_dtype_for(arch: str) -> torch.dtype | None:
    """The device's e4m3 encoding; None where the architecture has no FP8 matmuls (MI200 and older, Radeon)."""
    return FP8_BY_ARCH.get(gfx_name(arch))


class AiterProbe(NamedTuple):
    """Whether aiter's kernels can run here, and why not (one line for the log) when they cannot."""

    usable: bool
    why: str


def probe_aiter(arch: str) -> AiterProbe:
    """aiter is usable when AMD's module imports, has the functions sgl calls, and the architecture is one it is built
    for. NOTE: imports aiter (it compiles kernels lazily, on first call); call it when choosing kernels, not at
    discovery."""
    if importlib.util.find_spec("aiter") is None:
        return AiterProbe(False, "aiter is not installed (AMD's ROCm/aiter; see docs/hardware.md)")
    try:
        module = importlib.import_module("aiter")
    except Exception as exc:  # noqa: BLE001 - a broken vendor build must leave the Triton path running
        return AiterProbe(False, f"aiter failed to import: {type(exc).__name__}: {exc}")
    missing = [name for name in AITER_FUNCTIONS if not hasattr(module, name)]
    if missing:
        return AiterProbe(False, f"the installed 'aiter' is not AMD's ROCm/aiter (it lacks {', '.join(missing)})")
    name = gfx_name(arch)
    if name not in AITER_ARCHS:
        supported = ", ".join(sorted(AITER_ARCHS))
        return AiterProbe(False, f"aiter is not built for {name or 'this device'} (it supports {supported})")
    return AiterProbe(True, f"aiter kernels on {name}")


@functools.lru_cache(maxsize=1)
def device_arch() -> str:
    """gfx name of device 0 ('' where torch does not report one, e.g. the ROCm platform forced onto NVIDIA)."""
    return gfx_name(str(getattr(torch.cuda.get_device_properties(0), "gcnArchName", "")))


def current_arch() -> str:
    """device_arch() where a GPU is visible, '' elsewhere (no probing a device that is not there)."""
    return device_arch() if torch.cuda.is_available() else ""
