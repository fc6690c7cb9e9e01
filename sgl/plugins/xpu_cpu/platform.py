"""CpuPlatform: every factory is the core's torch reference; it is the fallback when nothing else is available."""

from __future__ import annotations

from typing import ClassVar

from sgl.core.platform import Capabilities, Platform


class CpuPlatform(Platform):
    name: ClassVar[str] = "cpu"
    device_type: ClassVar[str] = "cpu"
    dist_backend: ClassVar[str] = "gloo"
    capabilities: ClassVar[Capabilities] = Capabilities(bf16=True, host_memory=True)
    probe_priority: ClassVar[int] = 1000
    verified_on_hardware: ClassVar[bool] = True  # every CI run is on a CPU

    @classmethod
    def is_available(cls) -> bool:
        return True
