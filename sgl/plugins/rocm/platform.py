"""RocmPlatform: AMD GPUs through PyTorch's HIP build, which answers the ``torch.cuda`` API (device type "cuda").

What is AMD's lives here and in ``arch.py``: probing (``torch.version.hip``), capabilities and the FP8 encoding from the
gfx architecture, and the choice between AMD's aiter kernels and the portable Triton ones. Memory, graphs (HIP graphs
behind ``torch.cuda.CUDAGraph``) and streams are the ``torch.cuda`` calls of ``sgl.plugins.torch_device``; RCCL answers
to the ``nccl`` backend name.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar

import torch

from sgl.core.env import EnvVar
from sgl.core.ops.table import Ops
from sgl.core.platform import Capabilities, ProbedCapabilities
from sgl.plugins.rocm.arch import AiterProbe, current_arch, fp8_dtype_for, probe_aiter
from sgl.plugins.torch_device import TorchCudaPlatform
from sgl.plugins.triton_platform import PortableTritonPlatform, has_triton

logger = logging.getLogger(__name__)

ON_CUDA = EnvVar(
    "SGL_TEST_ROCM_ON_CUDA", None,
    "TEST ONLY: lets the rocm platform run on a CUDA build of torch (its torch.cuda calls are the same API), so its "
    "own logic is exercised on an NVIDIA GPU; it proves nothing about AMD hardware",
)

_STATIC = Capabilities(
    triton=False, graph_capture=True, overlap_schedule=True, fp8=False, fp4=False, bf16=True,
    pinned_memory=True, streams=True,
)


def capabilities_for(arch: str, triton: bool) -> Capabilities:
    """FP8 matmuls on MI300 (gfx942) and MI350 (gfx950), FP4 on MI350; bf16 on every CDNA part sgl targets."""
    return Capabilities(
        triton=triton,
        graph_capture=True,
        overlap_schedule=True,
        fp8=fp8_dtype_for(arch) is not None,
        fp4=arch == "gfx950",
        bf16=True,
        pinned_memory=True,
        streams=True,
    )


@functools.lru_cache(maxsize=1)
def _probe_capabilities() -> Capabilities:
    if not RocmPlatform.is_available():
        return _STATIC
    return capabilities_for(current_arch(), has_triton())


@functools.lru_cache(maxsize=None)
def _log_once(message: str) -> None:
    logger.warning(message)


@functools.lru_cache(maxsize=1)
def _aiter() -> AiterProbe:
    probe = probe_aiter(current_arch())
    logger.info("rocm: %s", probe.why)
    return probe


class RocmPlatform(PortableTritonPlatform, TorchCudaPlatform):
    name: ClassVar[str] = "rocm"
    device_type: ClassVar[str] = "cuda"  # NOTE: a HIP build of torch names AMD GPUs "cuda"
    dist_backend: ClassVar[str] = "nccl"  # NOTE: RCCL, under the name torch.distributed knows it by
    capabilities: ClassVar[Capabilities] = ProbedCapabilities(lambda: _probe_capabilities())  # type: ignore[assignment]
    probe_priority: ClassVar[int] = 20
    verified_on_hardware: ClassVar[bool] = False

    # identity -----------------------------------------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        return (torch.version.hip is not None or ON_CUDA.get_bool()) and torch.cuda.is_available()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if torch.version.hip is None and not ON_CUDA.get_bool():
            return "torch is not a ROCm build"
        if not torch.cuda.is_available():
            return "no AMD GPU is visible to torch"
        return None

    def fp8_dtype(self) -> torch.dtype:
        """float8_e4m3fnuz on MI300 (gfx942), float8_e4m3fn on MI350 (gfx950); the OCP encoding elsewhere."""
        if not self.is_available():
            return torch.float8_e4m3fn
        return fp8_dtype_for(current_arch()) or torch.float8_e4m3fn

    # factories ----------------------------------------------------------------------------------------------
    def default_attention_backend(self) -> str:
        """aiter where AMD's kernels run on this GPU, else the portable Triton backend; the log says which and why."""
        if not has_triton():
            _log_once("triton is not installed: attention runs on the torch_native backend (pip install 'sgl[rocm]')")
            return "torch_native"
        probe = _aiter()
        if probe.usable:
            return "aiter"
        _log_once(f"rocm: attention runs on the portable triton backend: {probe.why}")
        return "triton"

    def ops(self) -> Ops:
        """The portable op table; aiter's RMSNorm (plain and fused with the residual add) where aiter runs here."""
        ops = super().ops()
        if has_triton() and _aiter().usable:
            from sgl.plugins.rocm import aiter_ops

            ops = ops.replace(rms_norm=aiter_ops.rms_norm, add_rms_norm=aiter_ops.add_rms_norm)
        return ops

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.is_available():
            info["arch"] = current_arch() or "(not reported)"
            info["fp8_dtype"] = str(self.fp8_dtype()).replace("torch.", "")
            info["aiter"] = _aiter().why
        return info
