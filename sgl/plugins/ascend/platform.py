"""AscendPlatform: Huawei Ascend NPUs through torch_npu, which adds the ``npu`` device and ``torch.npu``.

Everything vendor-specific is reached through ``torch.npu`` (memory, streams, events, NPU graphs) and ``torch_npu``
(fused attention, norm and rotary ops); collectives are HCCL. Nothing here runs Triton.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar

import torch

from sgl.core.attention.base import AttentionBackend
from sgl.core.ops.table import Ops
from sgl.core.platform import Capabilities, ProbedCapabilities
from sgl.plugins.ascend.runtime import npu_runtime
from sgl.plugins.torch_device import TorchDevicePlatform, has_graphs

logger = logging.getLogger(__name__)


def _npu() -> Any:
    """``torch.npu``, which exists once torch_npu has imported (only ever called on an available platform)."""
    npu_runtime()
    return torch.npu  # type: ignore[attr-defined]


def has_npu_graphs() -> bool:
    return has_graphs(getattr(torch, "npu", None) if npu_runtime().module is not None else None, "NPUGraph")


def capabilities_now() -> Capabilities:
    return Capabilities(
        triton=False, graph_capture=has_npu_graphs(), overlap_schedule=True, fp8=False, fp4=False, bf16=True,
        pinned_memory=True, streams=True,
    )


@functools.lru_cache(maxsize=None)
def _log_once(message: str) -> None:
    logger.warning(message)


class AscendPlatform(TorchDevicePlatform):
    name: ClassVar[str] = "ascend"
    device_type: ClassVar[str] = "npu"
    dist_backend: ClassVar[str] = "hccl"
    capabilities: ClassVar[Capabilities] = ProbedCapabilities(capabilities_now)  # type: ignore[assignment]
    probe_priority: ClassVar[int] = 30
    verified_on_hardware: ClassVar[bool] = False

    graph_class: ClassVar[str] = "NPUGraph"
    no_graphs_reason: ClassVar[str] = "this torch_npu has no NPU graphs"

    @classmethod
    def device_module(cls) -> Any:
        return _npu()

    def graphs_available(self) -> bool:
        return has_npu_graphs()  # NOTE: without torch_npu there is no torch.npu to ask

    @classmethod
    def is_available(cls) -> bool:
        return npu_runtime().why is None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return npu_runtime().why

    # factories ----------------------------------------------------------------------------------------------
    def default_attention_backend(self) -> str:
        return "ascend"

    def ops(self) -> Ops:
        from sgl.plugins.ascend.ops import ascend_ops

        return ascend_ops()

    def graph_runner(self, runner: Any) -> Any:
        """Decode graphs where this torch_npu has NPU graphs and the attention backend can be captured; eager else.

        NOTE: the shared graph runner lives in ``sgl.kernels``, which needs triton; the ascend attention backend
        gathers per request on the host, so it has no graph hooks and decode runs eagerly today.
        """
        if not has_npu_graphs():
            _log_once("ascend: this torch_npu has no NPU graphs: decode runs eagerly")
            return None
        backend = getattr(runner, "attn_backend", None)
        if backend is None or type(backend).init_graph_state is AttentionBackend.init_graph_state:
            _log_once(f"ascend: decode runs eagerly: attention backend {type(backend).__name__} cannot be captured")
            return None
        try:
            from sgl.kernels.graph_runner import graph_runner_for
        except ImportError as exc:
            _log_once(f"ascend: decode runs eagerly: the graph runner needs triton ({exc})")
            return None
        return graph_runner_for(runner, self)
