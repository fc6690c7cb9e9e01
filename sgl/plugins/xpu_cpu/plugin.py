"""Hook implementations of the CPU platform plugin (light: names classes by string)."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_platforms() -> dict[str, str]:
    return {"cpu": "sgl.plugins.xpu_cpu.platform:CpuPlatform"}
