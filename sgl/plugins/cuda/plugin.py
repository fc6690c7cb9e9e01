"""Hook implementations of the CUDA platform plugin (light: names classes by string, imports neither torch.cuda
nor triton)."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_platforms() -> dict[str, str]:
    return {"cuda": "sgl.plugins.cuda.platform:CudaPlatform"}


@hookimpl
def sgl_attention_backends() -> dict[str, str]:
    return {"triton": "sgl.plugins.cuda.attention:TritonAttnBackend"}
