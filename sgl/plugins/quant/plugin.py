"""Hook implementations of the quantization plugin (light: names each method by string, imports none)."""

from __future__ import annotations

from sgl.core.hooks import hookimpl


@hookimpl
def sgl_quantization_methods() -> dict[str, str]:
    return {
        "fp8": "sgl.plugins.quant.fp8:Fp8Method",
        "compressed-tensors": "sgl.plugins.quant.compressed_tensors:CompressedTensorsMethod",
        "awq": "sgl.plugins.quant.awq:AwqMethod",
        "gptq": "sgl.plugins.quant.gptq:GptqMethod",
        "modelopt": "sgl.plugins.quant.nvfp4:ModelOptMethod",
        "modelopt_fp4": "sgl.plugins.quant.nvfp4:ModelOptMethod",
    }
