"""FP8 weights on a device that computes in ``float8_e4m3fnuz`` (AMD MI300): the OCP checkpoint is re-encoded at
load with its scales doubled, so every weight keeps its value exactly, and activations are quantized into fnuz.

NOTE: ``FnuzStandIn`` is a stand-in, not ROCm: the CPU platform answering ``fp8_dtype()`` as the ROCm plugin does on
gfx942. It tests our re-encoding and quantizer logic, not AMD's kernels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.platform import Platform
from sgl.core.plugins import get_plugins
from sgl.core.quant.base import select_quantization
from sgl.plugins.quant import fp8_math as fm
from sgl.plugins.quant.fp8_linear import Fp8LinearMethod
from tests.quant.checkpoints import write_pair
from tests.quant.test_fp8 import (
    HF_BLOCK, STATIC_INPUTS, TOKEN_INPUTS, block_quantizer, ct_config, ct_quantizer, demo, wide,  # noqa: F401
)

FNUZ = torch.float8_e4m3fnuz


class FnuzStandIn(Platform):
    """A stand-in for an MI300 (gfx942): the CPU reference, storing FP8 in the fnuz encoding."""

    name = "fnuz-stand-in"

    def fp8_dtype(self) -> torch.dtype:
        return FNUZ


def _load(path: Path, platform: Platform, quantization: str | None = None) -> Any:
    plugins = get_plugins()
    config = json.loads((path / "config.json").read_text())
    method = select_quantization(quantization, config.get("quantization_config"), plugins.quantization_methods,
                                 platform)
    ctx = ModelContext.from_platform(platform, torch.float32, quant_config=method)
    return load_model(str(path), ctx, models=plugins.models)[0]


def _fp8_layers(model: Any) -> dict[str, Any]:
    return {name: m for name, m in model.named_modules() if isinstance(getattr(m, "linear_method", None),
                                                                       Fp8LinearMethod)}


FORMATS = {
    "hf-block": (lambda: block_quantizer(128), HF_BLOCK),
    "ct-channel-token": (lambda: ct_quantizer("channel"), ct_config("channel", TOKEN_INPUTS)),
    "ct-tensor-static": (lambda: ct_quantizer("tensor", True), ct_config("tensor", STATIC_INPUTS)),
    "ct-channel-weight-only": (lambda: ct_quantizer("channel"), ct_config("channel", None)),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_fnuz_device_keeps_every_checkpoint_weight_exactly(tmp_path: Path, wide: Path, fmt: str) -> None:  # noqa: F811
    quantizer, config = FORMATS[fmt]
    q, _ = write_pair(wide, tmp_path / "q", tmp_path / "d", quantizer(), config)
    ocp, fnuz = _fp8_layers(_load(q, Platform())), _fp8_layers(_load(q, FnuzStandIn()))
    assert ocp and ocp.keys() == fnuz.keys()
    for name, layer in fnuz.items():
        assert layer.weight.dtype == FNUZ, name
        assert ocp[name].weight.dtype == torch.float8_e4m3fn, name
        torch.testing.assert_close(layer.linear_method.dequantized_weight(layer),
                                   ocp[name].linear_method.dequantized_weight(ocp[name]), atol=0, rtol=0)


def test_fnuz_weight_only_model_computes_exactly_what_the_ocp_one_does(tmp_path: Path, wide: Path) -> None:  # noqa: F811
    quantizer, config = FORMATS["ct-channel-weight-only"]
    q, _ = write_pair(wide, tmp_path / "q", tmp_path / "d", quantizer(), config)
    x = torch.randn(3, 5, 256, generator=torch.Generator().manual_seed(2))
    name = "model.layers.0.mlp.gate_up_proj"
    ocp, fnuz = _load(q, Platform()).get_submodule(name), _load(q, FnuzStandIn()).get_submodule(name)
    torch.testing.assert_close(fnuz(x), ocp(x), atol=0, rtol=0)


def test_fnuz_activations_saturate_at_240_and_the_gemm_is_exact(tmp_path: Path, wide: Path) -> None:  # noqa: F811
    """W8A8 per token: output = x rounded through fnuz (scale amax / 240) @ the dequantized weight."""
    quantizer, config = FORMATS["ct-channel-token"]
    q, d = write_pair(wide, tmp_path / "q", tmp_path / "d", quantizer(), config)
    layer = _load(q, FnuzStandIn()).get_submodule("model.layers.1.self_attn.qkv_proj")
    dense = load_file(str(d / "model.safetensors"))
    w = torch.cat([dense[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(5)) * 3
    scale = x.abs().amax(-1, keepdim=True) / 240.0
    xq = (x / scale).clamp(-240, 240).to(FNUZ).float() * scale
    torch.testing.assert_close(layer(x), xq @ w.T, atol=1e-5, rtol=1e-5)


def test_online_fp8_on_a_fnuz_device_quantizes_into_fnuz(demo: Path) -> None:  # noqa: F811
    model = _load(demo, FnuzStandIn(), "fp8")
    layers = _fp8_layers(model)
    assert layers and all(m.weight.dtype == FNUZ for m in layers.values())
    for m in layers.values():
        assert float(m.weight.float().abs().max()) <= 240.0


def test_the_one_byte_that_means_nan_in_fnuz_becomes_zero() -> None:
    ocp = torch.tensor([0.0, -0.0, 1.5, -448.0], dtype=torch.float8_e4m3fn)
    fnuz = fm.to_e4m3fnuz(ocp)
    assert not torch.isnan(fnuz.float()).any()
    torch.testing.assert_close(fnuz.float() * 2, ocp.float().abs() * torch.tensor([1.0, 1.0, 1.0, -1.0]))
