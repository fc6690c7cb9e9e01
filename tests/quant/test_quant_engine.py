"""The quantization plugin as users meet it: discovered through its entry point, chosen by a checkpoint's config or
by ``--quantization``, serving through ``sgl.Engine`` (dummy weights included)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from sgl.core.plugins import get_plugins
from tests.core.engine_utils import PROMPTS, greedy_ids, make_engine
from tests.quant.checkpoints import write_pair
from tests.quant.test_fp8 import ct_config, ct_quantizer

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("fp8", "compressed-tensors", "awq", "gptq", "modelopt", "modelopt_fp4")


def test_methods_come_from_the_quant_entry_point_like_a_third_partys() -> None:
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["sgl.plugins"]
    assert entry["quant"] == "sgl.plugins.quant.plugin"
    registry = get_plugins().quantization_methods
    for name in METHODS:
        assert name in registry.names()
        assert registry.get(name).__module__.startswith("sgl.plugins.quant.")
    core = "".join(p.read_text() for p in (ROOT / "sgl" / "core").rglob("*.py"))
    assert "sgl.plugins.quant" not in core


def test_engine_serves_a_compressed_tensors_fp8_checkpoint_like_its_dequantized_weights(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    q, d = write_pair(demo_model_dir, tmp_path / "q", tmp_path / "d", ct_quantizer("channel"),
                      ct_config("channel", None))
    outs = []
    for path in (q, d):
        engine = make_engine(path)
        try:
            outs.append(greedy_ids(engine, PROMPTS[:4]))
        finally:
            engine.shutdown()
    assert outs[0] == outs[1]


def test_engine_with_dummy_weights_and_online_fp8_generates(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir, load_format="dummy", quantization="fp8")
    try:
        out = engine.generate(PROMPTS[:2], {"temperature": 0.0, "max_new_tokens": 8, "ignore_eos": True})
    finally:
        engine.shutdown()
    assert [len(o["output_ids"]) for o in out] == [8, 8]
