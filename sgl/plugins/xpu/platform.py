"""XpuPlatform: Intel GPUs through ``torch.xpu``, PyTorch's own XPU device (2.5+).

Intel's extension for PyTorch is end-of-life and is not used. Kernels are the portable Triton ones (Triton's XPU
backend ships with PyTorch's XPU wheels as ``pytorch-triton-xpu``, importable as ``triton``); graphs are
``torch.xpu.XPUGraph`` where the PyTorch build has them; collectives are XCCL.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sgl.core.ops.table import Ops, reference_ops
from sgl.core.platform import Capabilities, ProbedCapabilities
from sgl.plugins.torch_device import TorchDevicePlatform, has_graphs

if TYPE_CHECKING:
    from sgl.core.attention.base import AttentionBackend
    from sgl.core.model.linear_method import LinearMethod

logger = logging.getLogger(__name__)


def _xpu() -> Any:
    return getattr(torch, "xpu", None)


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def has_xpu_graphs() -> bool:
    return has_graphs(_xpu(), "XPUGraph")


def capabilities_now() -> Capabilities:
    """No FP8 matmuls claimed: none of sgl's kernels has run on an Intel GPU's FP8 path."""
    return Capabilities(
        triton=_has_triton(), graph_capture=has_xpu_graphs(), overlap_schedule=True, fp8=False, fp4=False,
        bf16=True, pinned_memory=True, streams=True,
    )



@functools.lru_cache(maxsize=None)
def _log_once(message: str) -> None:
    logger.warning(message)


class XpuPlatform(TorchDevicePlatform):
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

    # factories ----------------------------------------------------------------------------------------------
    def default_attention_backend(self) -> str:
        if _has_triton():
            return "triton"
        _log_once("triton is not installed: attention runs on the torch_native backend (pip install 'sgl[xpu]')")
        return "torch_native"

    def attention_backend(self, name: str, runner: Any) -> AttentionBackend:
        # NOTE: the portable Triton backend is sgl's own (sgl.kernels): built directly, not through another vendor.
        if name == "triton":
            from sgl.kernels.attention_backend import TritonAttnBackend

            return TritonAttnBackend(runner)
        return super().attention_backend(name, runner)

    def linear_method(self, quant_config: Any = None) -> LinearMethod:
        if quant_config is not None or not _has_triton():
            return super().linear_method(quant_config)
        from sgl.kernels.linear_method import SkinnyLinearMethod

        return SkinnyLinearMethod()

    def ops(self) -> Ops:
        if not _has_triton():
            _log_once("triton is not installed: norms, rope and activations run as torch reference ops")
            return reference_ops()
        from sgl import kernels

        return kernels.portable_ops()

    def graph_runner(self, runner: Any) -> Any:
        if not _has_triton():
            _log_once("triton is not installed: decode graphs are off (pip install 'sgl[xpu]')")
            return None
        from sgl.kernels.graph_runner import graph_runner_for

        return graph_runner_for(runner, self)  # NOTE: it logs and returns None where XPU graphs are missing
