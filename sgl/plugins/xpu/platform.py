"""XpuPlatform: Intel GPUs through ``torch.xpu``, PyTorch's own XPU device (2.5+).

Intel's extension for PyTorch is end-of-life and is not used. Kernels are the portable Triton ones (Triton's XPU
backend ships with PyTorch's XPU wheels as ``pytorch-triton-xpu``, importable as ``triton``); graphs are
``torch.xpu.XPUGraph`` where the PyTorch build has them; collectives are XCCL.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sgl.core.platform import Capabilities, ProbedCapabilities
from sgl.plugins.torch_device import TorchDevicePlatform, has_graphs
from sgl.plugins.triton_platform import PortableTritonPlatform, has_triton


def _xpu() -> Any:
    return getattr(torch, "xpu", None)


def has_xpu_graphs() -> bool:
    return has_graphs(_xpu(), "XPUGraph")


def capabilities_now() -> Capabilities:
    """No FP8 matmuls claimed: none of sgl's kernels has run on an Intel GPU's FP8 path."""
    return Capabilities(
        triton=has_triton(), graph_capture=has_xpu_graphs(), overlap_schedule=True, fp8=False, fp4=False,
        bf16=True, pinned_memory=True, streams=True,
    )


class XpuPlatform(PortableTritonPlatform, TorchDevicePlatform):
    name: ClassVar[str] = "xpu"
    device_type: ClassVar[str] = "xpu"
    dist_backend: ClassVar[str] = "xccl"
    capabilities: ClassVar[Capabilities] = ProbedCapabilities(capabilities_now)  # type: ignore[assignment]
    probe_priority: ClassVar[int] = 40
    verified_on_hardware: ClassVar[bool] = False

    graph_class: ClassVar[str] = "XPUGraph"
    no_graphs_reason: ClassVar[str] = "this PyTorch build has no XPU graphs"

    @classmethod
    def device_module(cls) -> Any:
        return _xpu()

    @classmethod
    def is_available(cls) -> bool:
        return cls.unavailable_reason() is None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        xpu = _xpu()
        if xpu is None:
            return "this torch has no torch.xpu: PyTorch 2.5+ is needed"
        compiled = getattr(xpu, "_is_compiled", None)
        if compiled is not None and not compiled():
            return "torch is not an XPU build"
        if not xpu.is_available():
            return "no Intel GPU is visible to torch.xpu"
        return None

    # memory -------------------------------------------------------------------------------------------------
    def total_memory(self) -> int:
        return int(_xpu().get_device_properties(self._current()).total_memory)

    def free_memory(self) -> int:
        xpu, index = _xpu(), self._current()
        if hasattr(xpu, "mem_get_info"):
            return int(xpu.mem_get_info(index)[0])
        return self.total_memory() - int(xpu.memory_reserved(index))
