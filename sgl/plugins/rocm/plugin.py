"""Hook implementations of the ROCm platform plugin (light: names classes by string, imports neither torch.cuda,
triton nor aiter). The Triton attention backend is the portable one of ``sgl.kernels``; the platform builds it."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_platforms() -> dict[str, str]:
    return {"rocm": "sgl.plugins.rocm.platform:RocmPlatform"}


@hookimpl
def sgl_attention_backends() -> dict[str, str]:
    return {"aiter": "sgl.plugins.rocm.aiter_backend:AiterAttnBackend"}
