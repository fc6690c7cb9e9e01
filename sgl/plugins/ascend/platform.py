"""AscendPlatform: Huawei Ascend NPUs through torch_npu, which adds the ``npu`` device and ``torch.npu``.

Everything vendor-specific is reached through ``torch.npu`` (memory, streams, events, NPU graphs) and ``torch_npu``
(fused attention, norm and rotary ops); collectives are HCCL. Nothing here runs Triton.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from sgl.core.attention.base import AttentionBackend
from sgl.core.ops.table import Ops
from sgl.core.platform import Capabilities, Platform
from sgl.plugins.ascend.runtime import npu_runtime

logger = logging.getLogger(__name__)


def _npu() -> Any:
    """``torch.npu``, which exists once torch_npu has imported (only ever called on an available platform)."""
    npu_runtime()
    return torch.npu  # type: ignore[attr-defined]


def has_npu_graphs() -> bool:
    npu = getattr(torch, "npu", None) if npu_runtime().module is not None else None
    return npu is not None and hasattr(npu, "NPUGraph") and hasattr(npu, "graph")


def capabilities_now() -> Capabilities:
    return Capabilities(
        triton=False, graph_capture=has_npu_graphs(), overlap_schedule=True, fp8=False, fp4=False, bf16=True,
        pinned_memory=True, streams=True,
    )


class _Capabilities:
    """Descriptor: NPU graphs are a property of the torch_npu build, read when the core asks (never at import)."""

    def __get__(self, obj: object, owner: type | None = None) -> Capabilities:
        return capabilities_now()


@functools.lru_cache(maxsize=None)
def _log_once(message: str) -> None:
    logger.warning(message)


class AscendPlatform(Platform):
    name: ClassVar[str] = "ascend"
    device_type: ClassVar[str] = "npu"
    dist_backend: ClassVar[str] = "hccl"
    capabilities: ClassVar[Capabilities] = _Capabilities()  # type: ignore[assignment]
    probe_priority: ClassVar[int] = 30
    verified_on_hardware: ClassVar[bool] = False

    def __init__(self) -> None:
        self._index: int | None = None

    @classmethod
    def is_available(cls) -> bool:
        return npu_runtime().why is None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return npu_runtime().why

    def set_device(self, index: int) -> None:
        _npu().set_device(index)
        self._index = index

    def _current(self) -> int:
        return self._index if self._index is not None else int(_npu().current_device())

    # memory -------------------------------------------------------------------------------------------------
    def total_memory(self) -> int:
        return int(_npu().mem_get_info(self._current())[1])

    def free_memory(self) -> int:
        return int(_npu().mem_get_info(self._current())[0])

    def synchronize(self) -> None:
        _npu().synchronize()

    def empty_cache(self) -> None:
        _npu().empty_cache()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        _npu().manual_seed_all(seed)

    def new_event(self) -> Any:
        return _npu().Event()

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

    # graphs and streams -------------------------------------------------------------------------------------
    def new_graph(self) -> Any:
        return _npu().NPUGraph() if has_npu_graphs() else None

    def graph_pool(self) -> Any:
        return _npu().graph_pool_handle() if has_npu_graphs() else None

    def new_stream(self) -> Any:
        return _npu().Stream()

    @contextlib.contextmanager
    def stream_context(self, stream: Any) -> Iterator[None]:
        npu = _npu()
        current = npu.current_stream()
        stream.wait_stream(current)
        with npu.stream(stream):
            yield
        current.wait_stream(stream)

    def graph_capture(self, graph: Any, pool: Any, stream: Any) -> contextlib.AbstractContextManager[Any]:
        if not has_npu_graphs():
            raise NotImplementedError("this torch_npu has no NPU graphs")
        return _npu().graph(graph, pool=pool, stream=stream)  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.is_available():
            info["device_name"] = _npu().get_device_name(self._current())
        return info
