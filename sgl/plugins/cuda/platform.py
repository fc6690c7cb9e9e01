"""CudaPlatform: NVIDIA GPUs through torch.cuda.

What is NVIDIA's lives here: probing and capabilities from the compute capability. Memory, graphs and streams are
the ``torch.cuda`` calls of ``sgl.plugins.torch_device``; the kernels, the Triton attention backend, the graph runner
and the GEMM method are the portable ones of ``sgl.kernels``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sgl.core.ops.table import Ops
from sgl.core.platform import Capabilities, ProbedCapabilities
from sgl.core.plugin_options import plugin_args
from sgl.plugins.cuda.args import CudaArgs
from sgl.plugins.torch_device import TorchCudaPlatform
from sgl.plugins.triton_platform import portable_or_reference_ops

if TYPE_CHECKING:
    from sgl.core.model.linear import LinearMethod
    from sgl.core.model.moe_method import MoEMethod

logger = logging.getLogger(__name__)

_STATIC = Capabilities(
    triton=False, graph_capture=True, overlap_schedule=True, fp8=False, fp4=False, bf16=False,
    pinned_memory=True, streams=True,
)


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=1)
def _probe_capabilities() -> Capabilities:
    """Capabilities of device 0 (a TP group shares one GPU model). Without a GPU, the static answer."""
    if not CudaPlatform.is_available():
        return _STATIC
    major, minor = torch.cuda.get_device_capability(0)
    return Capabilities(
        triton=_has_triton(),
        graph_capture=True,
        overlap_schedule=True,
        fp8=(major, minor) >= (8, 9),
        fp4=major >= 10,
        bf16=major >= 8,
        pinned_memory=True,
        streams=True,
    )


@functools.lru_cache(maxsize=1)
def _log_once(message: str) -> None:
    logger.warning(message)


def configure_pdl(server_args: Any, pdl: Any) -> None:
    """``--cuda-pdl`` into ``sgl.kernels.pdl``'s process-wide launch policy, before the decode graphs are captured
    (the captured launches keep it). Unset, it is on wherever the device can; asked for on a device that cannot
    launch dependents, that is logged and launches stay plain."""
    option = plugin_args(server_args, CudaArgs)
    capable = pdl.supported(torch.device("cuda", torch.cuda.current_device()))
    on = option.wanted(graphs=not server_args.disable_cuda_graph, capable=capable)
    if option.pdl and not capable:
        logger.warning("--cuda-pdl: this GPU cannot launch dependent kernels (needs compute capability 9.0+); "
                       "kernels launch as usual")
    elif on:
        logger.info("programmatic dependent launch: the decode-path kernels launch as dependents (--no-cuda-pdl "
                    "turns it off)")
    pdl.configure(on)


class CudaPlatform(TorchCudaPlatform):
    name: ClassVar[str] = "cuda"
    device_type: ClassVar[str] = "cuda"
    dist_backend: ClassVar[str] = "nccl"
    capabilities: ClassVar[Capabilities] = ProbedCapabilities(lambda: _probe_capabilities())  # type: ignore[assignment]
    probe_priority: ClassVar[int] = 10
    verified_on_hardware: ClassVar[bool] = True  # tests/gpu run on an NVIDIA H200

    # identity -----------------------------------------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        # NOTE: ROCm builds of torch answer torch.cuda too; they belong to the rocm platform.
        return torch.version.hip is None and torch.cuda.is_available()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if torch.version.hip is not None:
            return "torch is a ROCm build (see the rocm platform)"
        if torch.version.cuda is None:
            return "torch is not a CUDA build"
        if not torch.cuda.is_available():
            return "no NVIDIA GPU is visible to torch"
        return None

    # factories ----------------------------------------------------------------------------------------------
    def default_attention_backend(self) -> str:
        if _has_triton():
            return "triton"
        _log_once("triton is not installed: attention runs on the torch_native backend (pip install 'sgl[cuda]')")
        return "torch_native"

    def linear_method(self, quant_config: Any = None) -> LinearMethod:
        if quant_config is not None:
            fast = quant_config.kernel_linear_method(self.capabilities) if _has_triton() else None
            if fast is None:
                _log_once(f"{type(quant_config).__name__}: no kernel for this GPU; linear layers run its torch reference")
                return super().linear_method(quant_config)
            return fast
        if not _has_triton():
            return super().linear_method(quant_config)
        from sgl.kernels.linear_method import SkinnyLinearMethod

        return SkinnyLinearMethod()

    def moe_method(self, quant_config: Any = None) -> MoEMethod | None:
        """Dense experts take the ops table's fused_moe (the Triton kernel); a quantization method's experts take
        its Triton MoE method where it has one, else its torch reference (logged once)."""
        if quant_config is None:
            return super().moe_method(quant_config)
        fast = quant_config.kernel_moe_method(self.capabilities) if _has_triton() else None
        if fast is None:
            _log_once(f"{type(quant_config).__name__}: no MoE kernel for this GPU; experts run its torch reference")
            return super().moe_method(quant_config)
        return fast  # type: ignore[no-any-return]

    def ops(self) -> Ops:
        return portable_or_reference_ops(_has_triton(), "norms, rope, activations and MoE")

    def graph_runner(self, runner: Any) -> Any:
        """Decode graphs through the portable runner of ``sgl.kernels``, when the attention backend can be captured.

        NOTE: importing sgl.kernels imports triton; without it the default attention backend is torch_native, which
        has no graph hooks, so graphs were off there anyway.
        """
        if not _has_triton():
            _log_once("triton is not installed: decode graphs are off (pip install 'sgl[cuda]')")
            return None
        from sgl.kernels import pdl
        from sgl.kernels.graph_runner import graph_runner_for

        configure_pdl(runner.args, pdl)
        return graph_runner_for(runner, self)
