"""Platforms driven through one of torch's device modules (``torch.cuda``, ``torch.xpu``, ``torch.npu``).

Those modules answer the same calls by design (set_device, mem_get_info, Stream, Event, graph, ...), so the device,
memory, stream and graph hooks are written once here; a vendor platform names its module and probes its hardware.
Not a plugin: vendor plugins import it, so nothing here imports a vendor runtime (or triton) at import time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from sgl.core.platform import Platform


def has_graphs(module: Any, graph_class: str) -> bool:
    """Whether ``module`` (None where the torch build lacks it) can capture graphs into ``graph_class``."""
    return module is not None and hasattr(module, graph_class) and hasattr(module, "graph")


class TorchDevicePlatform(Platform):
    """The Platform hooks over ``device_module()``; graphs where the build has ``graph_class``, else none."""

    graph_class: ClassVar[str]
    no_graphs_reason: ClassVar[str] = "this torch build has no device graphs"

    def __init__(self) -> None:
        self._index: int | None = None

    @classmethod
    def device_module(cls) -> Any:
        raise NotImplementedError

    def set_device(self, index: int) -> None:
        self.device_module().set_device(index)
        self._index = index

    def _current(self) -> int:
        return self._index if self._index is not None else int(self.device_module().current_device())

    # memory -------------------------------------------------------------------------------------------------
    def total_memory(self) -> int:
        return int(self.device_module().mem_get_info(self._current())[1])

    def free_memory(self) -> int:
        return int(self.device_module().mem_get_info(self._current())[0])

    def synchronize(self) -> None:
        self.device_module().synchronize()

    def empty_cache(self) -> None:
        self.device_module().empty_cache()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.device_module().manual_seed_all(seed)

    def new_event(self) -> Any:
        return self.device_module().Event()

    # graphs and streams -------------------------------------------------------------------------------------
    def graphs_available(self) -> bool:
        return has_graphs(self.device_module(), self.graph_class)

    def new_graph(self) -> Any:
        return getattr(self.device_module(), self.graph_class)() if self.graphs_available() else None

    def graph_pool(self) -> Any:
        return self.device_module().graph_pool_handle() if self.graphs_available() else None

    def new_stream(self) -> Any:
        return self.device_module().Stream()

    @contextlib.contextmanager
    def stream_context(self, stream: Any) -> Iterator[None]:
        module = self.device_module()
        current = module.current_stream()
        stream.wait_stream(current)
        with module.stream(stream):
            yield
        current.wait_stream(stream)

    def graph_capture(self, graph: Any, pool: Any, stream: Any) -> contextlib.AbstractContextManager[Any]:
        if not self.graphs_available():
            raise NotImplementedError(self.no_graphs_reason)
        return self.device_module().graph(graph, pool=pool, stream=stream)  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.is_available():
            info["device_name"] = self.device_module().get_device_name(self._current())
        return info


class TorchCudaPlatform(TorchDevicePlatform):
    """``torch.cuda``, which CUDA builds of torch drive NVIDIA GPUs through and HIP builds drive AMD GPUs through."""

    graph_class: ClassVar[str] = "CUDAGraph"

    @classmethod
    def device_module(cls) -> Any:
        return torch.cuda

    def graph_capture(self, graph: Any, pool: Any, stream: Any) -> contextlib.AbstractContextManager[Any]:
        # NOTE: thread_local: the engine's other threads (tokenizer, event loop) may touch the device while a
        # capture runs; only this thread's forbidden calls can spoil it
        return torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local")
