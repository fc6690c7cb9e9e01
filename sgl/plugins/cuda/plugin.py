"""Hook implementations of the CUDA platform plugin (light: names classes by string, imports neither torch.cuda
nor triton). The Triton attention backend it registers is the portable one of ``sgl.kernels``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sgl.core.hooks import hookimpl

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs


@hookimpl
def sgl_platforms() -> dict[str, str]:
    return {"cuda": "sgl.plugins.cuda.platform:CudaPlatform"}


@hookimpl
def sgl_attention_backends() -> dict[str, str]:
    return {"triton": "sgl.kernels.attention_backend:TritonAttnBackend"}


@hookimpl
def sgl_server_args() -> str:
    return "sgl.plugins.cuda.args:CudaArgs"


@hookimpl
def sgl_startup_check(server_args: ServerArgs) -> None:
    """An explicit ``--cuda-pdl`` is refused where it would change nothing: off the cuda backend, or without decode
    graphs (the platform turns it on when it builds them). Unset, it follows the device quietly."""
    from sgl.core.plugin_options import plugin_args
    from sgl.core.plugins import select_platform
    from sgl.plugins.cuda.args import CudaArgs

    if not plugin_args(server_args, CudaArgs).pdl:
        return
    if server_args.disable_cuda_graph:
        raise ValueError("--cuda-pdl applies to the decode graphs; drop it or --disable-cuda-graph")
    platform = select_platform(server_args.backend).name
    if platform != "cuda":
        raise ValueError(f"--cuda-pdl needs the cuda backend; this run is on {platform!r}")
