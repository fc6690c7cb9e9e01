"""Hook implementations of the Intel XPU platform plugin (light: names the class by string). Its attention backend
is the portable Triton one of ``sgl.kernels``, which the platform builds."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_platforms() -> dict[str, str]:
    return {"xpu": "sgl.plugins.xpu.platform:XpuPlatform"}
