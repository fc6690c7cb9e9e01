"""Hook implementations of the Ascend platform plugin (light: names classes by string; torch_npu is imported only
when the platform is probed or used)."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_platforms() -> dict[str, str]:
    return {"ascend": "sgl.plugins.ascend.platform:AscendPlatform"}


@hookimpl
def sgl_attention_backends() -> dict[str, str]:
    return {"ascend": "sgl.plugins.ascend.attention:AscendAttnBackend"}
