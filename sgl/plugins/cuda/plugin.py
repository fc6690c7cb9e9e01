"""Hook implementations of the CUDA platform plugin (light: names classes by string, imports neither torch.cuda
nor triton). The Triton attention backend it registers is the portable one of ``sgl.kernels``."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_platforms() -> dict[str, str]:
    return {"cuda": "sgl.plugins.cuda.platform:CudaPlatform"}


@hookimpl
def sgl_attention_backends() -> dict[str, str]:
    return {"triton": "sgl.kernels.attention_backend:TritonAttnBackend"}
