"""Hook implementations of the LoRA plugin (light: names the backends by string, imports nothing heavy)."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_lora_backends() -> dict[str, str]:
    return {
        "triton": "sgl.plugins.lora.backend:TritonLoRABackend",
        "torch": "sgl.plugins.lora.backend:TorchLoRABackend",
    }
