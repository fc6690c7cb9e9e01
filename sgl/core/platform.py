"""The hardware contract. The core asks the active Platform; the platform answers.

The base class answers every factory with the torch reference, so a new vendor starts working on day one and then
overrides only what it accelerates. Overrides are signature-checked when the subclass is defined.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from sgl.core.attention.base import AttentionBackend
    from sgl.core.distributed.communicator import Communicator
    from sgl.core.model.linear_method import LinearMethod
    from sgl.core.model.moe_method import MoEMethod
    from sgl.core.ops.table import Ops
    from sgl.core.sampling.sampler import Sampler


@dataclass(frozen=True)
class Capabilities:
    """What the device can do; the core reads these before it builds anything."""

    triton: bool = False
    graph_capture: bool = False
    overlap_schedule: bool = False
    fp8: bool = False
    fp4: bool = False
    bf16: bool = True
    pinned_memory: bool = False
    streams: bool = False
    host_memory: bool = False  # its "device memory" is the host's RAM (implied for device_type "cpu"): an
    # auto-sized KV pool is capped

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


class ProbedCapabilities:
    """Descriptor: a platform's capabilities from ``probe()`` on each read, so the device is asked when the core asks
    (a probe may initialise it), never at import or during platform probing."""

    def __init__(self, probe: Callable[[], Capabilities]) -> None:
        self._probe = probe

    def __get__(self, obj: object, owner: type | None = None) -> Capabilities:
        return self._probe()


class QuantizedGemm(Protocol):
    """What a platform asks of a quantization method (``sgl.core.quant.base.QuantizationMethod``): its reference
    GEMM and expert method, and faster ones for these capabilities where it has them."""

    def linear_method(self) -> LinearMethod: ...

    def kernel_linear_method(self, capabilities: Capabilities) -> LinearMethod | None: ...

    def moe_method(self) -> MoEMethod | None: ...

    def kernel_moe_method(self, capabilities: Capabilities) -> MoEMethod | None: ...


_CHECKED_METHODS = (
    "is_available",
    "total_memory",
    "free_memory",
    "synchronize",
    "empty_cache",
    "set_device",
    "device",
    "manual_seed",
    "new_event",
    "attention_backend",
    "default_attention_backend",
    "linear_method",
    "moe_method",
    "ops",
    "communicator",
    "graph_runner",
    "sampler",
    "new_graph",
    "graph_pool",
    "new_stream",
    "stream_context",
    "graph_capture",
    "unavailable_reason",
    "fp8_dtype",
)


class Platform:
    """Base platform: identity, capabilities, memory, and factories that default to the torch reference."""

    name: ClassVar[str] = "base"
    device_type: ClassVar[str] = "cpu"
    dist_backend: ClassVar[str] = "gloo"
    capabilities: ClassVar[Capabilities] = Capabilities()
    probe_priority: ClassVar[int] = 100
    """Lower probes first when no backend is named; a CPU fallback uses a high number."""
    verified_on_hardware: ClassVar[bool] = False
    """Whether this platform's kernels have run on its own hardware in sgl's tests (``sgl plugins`` shows it). A
    platform written against a vendor's public API without the device at hand says False until they have."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in _CHECKED_METHODS:
            if method not in cls.__dict__:
                continue
            base = inspect.signature(getattr(Platform, method))
            mine = inspect.signature(getattr(cls, method))
            if [(p.name, p.kind) for p in base.parameters.values()] != [
                (p.name, p.kind) for p in mine.parameters.values()
            ]:
                raise TypeError(
                    f"platform {cls.__qualname__}.{method}{mine} does not match the contract: "
                    f"expected {method}{base}"
                )

    # identity -----------------------------------------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        """Cheap probe: must not initialise the device or import a vendor library that may be missing."""
        return False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why ``is_available()`` is False, in words a user can act on ("<its runtime> is not installed"); None when it
        is available or the platform gives no reason. As cheap and side-effect free as ``is_available()``."""
        return None

    def device(self, index: int = 0) -> torch.device:
        return torch.device(self.device_type, index) if self.device_type != "cpu" else torch.device("cpu")

    def set_device(self, index: int) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "device_type": self.device_type, "dist_backend": self.dist_backend,
                "capabilities": self.capabilities.as_dict()}

    # memory -------------------------------------------------------------------------------------------------
    def total_memory(self) -> int:
        """Bytes of memory the KV pool and weights share."""
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def free_memory(self) -> int:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")

    def synchronize(self) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def new_event(self) -> Any:
        """An event with ``record()`` and ``synchronize()`` on the current stream; None where work is synchronous."""
        return None

    def fp8_dtype(self) -> torch.dtype:
        """The e4m3 FP8 encoding this device computes in: the OCP ``float8_e4m3fn`` unless the platform says
        otherwise (AMD MI300 uses ``float8_e4m3fnuz``). An fp8_e4m3 KV cache and FP8 weights are stored in it."""
        return torch.float8_e4m3fn

    # factories ----------------------------------------------------------------------------------------------
    def default_attention_backend(self) -> str:
        return "torch_native"

    def attention_backend(self, name: str, runner: Any) -> AttentionBackend:
        """The backend registered as ``name``; ``runner.attention_backends`` is the registry the engine hands the
        runner (the core's backends and every plugin's), so the platform never reaches for plugin discovery."""
        return runner.attention_backends.get(name)(runner)  # type: ignore[no-any-return]

    def linear_method(self, quant_config: QuantizedGemm | None = None) -> LinearMethod:
        """The GEMM hook: dense weights without a quantization method, else the method's torch reference; a platform
        overrides this for the methods it has fast kernels for."""
        if quant_config is None:
            from sgl.core.model.linear_method import UnquantizedLinearMethod

            return UnquantizedLinearMethod()
        return quant_config.linear_method()

    def moe_method(self, quant_config: QuantizedGemm | None = None) -> MoEMethod | None:
        """The experts hook: dense experts through ``ops().fused_moe`` without a quantization method, else the
        method's torch reference (None: the method has no expert layout); a platform overrides this for the methods
        it has fast expert kernels for."""
        if quant_config is None:
            from sgl.core.model.moe_method import UnquantizedMoEMethod

            return UnquantizedMoEMethod()
        return quant_config.moe_method()

    def ops(self) -> Ops:
        from sgl.core.ops.table import reference_ops

        return reference_ops()

    def communicator(self, group: Any) -> Communicator:
        from sgl.core.distributed.communicator import TorchCommunicator

        return TorchCommunicator(group)

    def graph_runner(self, runner: Any) -> Any:
        """A runner that replays captured decode graphs, or None where graphs are not supported."""
        return None

    def sampler(self) -> Sampler:
        from sgl.core.sampling.sampler import Sampler

        return Sampler()

    # graphs and streams: what a portable graph runner captures with -----------------------------------------
    def new_graph(self) -> Any:
        """An empty graph to capture into (it has ``replay()``); None where the device cannot capture."""
        return None

    def graph_pool(self) -> Any:
        """A memory-pool handle: graphs captured with the same one share their buffers."""
        return None

    def new_stream(self) -> Any:
        """A side stream to capture on, or None where the device runs one queue."""
        return None

    def stream_context(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        """Runs the block on ``stream``, after the work queued before it and before the work queued after."""
        return contextlib.nullcontext()

    def graph_capture(self, graph: Any, pool: Any, stream: Any) -> contextlib.AbstractContextManager[Any]:
        """Records the block's device work, run on ``stream``, into ``graph``, allocating from ``pool``."""
        raise NotImplementedError(f"platform {self.name!r} cannot capture graphs")
