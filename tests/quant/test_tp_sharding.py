"""Under tensor parallelism every rank's quantized shard (block scales, packed int4 along either dim, per-slice
scales, act-order g_idx) dequantizes to exactly that rank's shard of the dense weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sgl.core.demo_model import write_demo_model
from sgl.core.distributed.communicator import ParallelState
from sgl.core.model.context import ModelContext
from sgl.core.model.linear import LinearBase
from sgl.core.model.loader import load_model
from sgl.core.platform import Platform
from sgl.core.plugins import get_plugins
from sgl.core.quant.base import select_quantization
from tests.quant.checkpoints import Quantizer, write_pair
from tests.quant.test_fp8 import block_quantizer, ct_config, ct_quantizer
from tests.quant.test_int4 import awq_config, awq_quantizer, gptq_config, gptq_quantizer
from tests.quant.test_nvfp4 import NVFP4, nvfp4_quantize

TP = 2
CASES: dict[str, tuple[Quantizer, dict[str, Any]]] = {
    "fp8-block64": (block_quantizer(64), {"quant_method": "fp8", "activation_scheme": "dynamic",
                                          "weight_block_size": [64, 64]}),
    "ct-fp8-tensor-static": (ct_quantizer("tensor", True), ct_config("tensor", {
        "num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True, "dynamic": False})),
    "awq-g64": (awq_quantizer(64), awq_config(64)),
    "gptq-g64-desc-act": (gptq_quantizer(64, True), gptq_config(64, True)),
    "nvfp4": (nvfp4_quantize, NVFP4),
}


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(
        tmp_path_factory.mktemp("tp") / "wide", seed=9, num_layers=1, hidden_size=256, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, intermediate_size=512, vocab_size=512,
    )


def _model(path: Path, rank: int) -> Any:
    plugins = get_plugins()
    config = json.loads((path / "config.json").read_text())
    method = select_quantization(None, config.get("quantization_config"), plugins.quantization_methods)
    ctx = ModelContext.from_platform(Platform(), torch.float32, ParallelState(rank, TP), quant_config=method)
    return load_model(str(path), ctx, models=plugins.models)[0]


@pytest.mark.parametrize("case", list(CASES))
def test_each_ranks_quantized_shard_is_its_dense_shard(tmp_path: Path, wide: Path, case: str) -> None:
    quantize, config = CASES[case]
    q, d = write_pair(wide, tmp_path / "q", tmp_path / "d", quantize, config)
    for rank in range(TP):
        quant, dense = _model(q, rank), _model(d, rank)
        layers = {n: m for n, m in quant.named_modules() if isinstance(m, LinearBase)}
        assert len(layers) == 4
        for name, layer in layers.items():
            expected = dense.get_submodule(name).weight
            got = layer.linear_method.dequantized_weight(layer)
            assert got.shape == expected.shape, name
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6, msg=f"rank {rank} {name}")
