"""ModelOpt NVFP4 checkpoints (e2m1 pairs in a byte, e4m3 scales per 16 inputs, a global scale per projection),
packed here from the format's definition, compute what their dequantized weights compute; ModelOpt FP8 loads too."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sgl.core.demo_model import write_demo_model
from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.platform import Platform
from sgl.core.plugins import get_plugins
from sgl.core.quant.base import select_quantization
from tests.core.tiny_models import build_forward_batch, make_paged_kv
from tests.quant.checkpoints import write_pair

MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
NVFP4 = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16, "exclude_modules": ["lm_head"]}


def _e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """Nearest e2m1 code (sign in bit 3) of each value in [-6, 6]."""
    mag = (v.abs().unsqueeze(-1) - MAGNITUDES).abs().argmin(-1)
    return mag | ((v < 0).long() << 3)


def nvfp4_quantize(name: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out, inp = w.shape
    global_scale = w.abs().max() / (6.0 * 448.0)
    groups = w.view(out, inp // 16, 16)
    block = (groups.abs().amax(-1) / 6.0 / global_scale).to(torch.float8_e4m3fn)  # [out, in/16]
    eff = block.float() * global_scale
    codes = _e2m1_codes(groups / eff.clamp(min=1e-12).unsqueeze(-1)).view(out, inp)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)
    signs = torch.where(codes >= 8, -1.0, 1.0)
    deq = (signs * MAGNITUDES[codes & 7]).view(out, inp // 16, 16) * eff.unsqueeze(-1)
    base = name.removesuffix(".weight")
    return {name: packed, base + ".weight_scale": block, base + ".weight_scale_2": global_scale.reshape(()),
            base + ".input_scale": torch.tensor(1.0)}, deq.view(out, inp)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("fp4") / "demo", seed=8, num_layers=2)


def _logits(path: Path, load_format: str = "auto") -> torch.Tensor:
    plugins = get_plugins()
    config = json.loads((path / "config.json").read_text())
    method = select_quantization(None, config.get("quantization_config"), plugins.quantization_methods, Platform())
    ctx = ModelContext.from_platform(Platform(), torch.float32, quant_config=method)
    model, cfg = load_model(str(path), ctx, load_format=load_format, models=plugins.models)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, cfg.vocab_size) for _ in range(n)] for n in (6, 21)]
    fb = build_forward_batch(make_paged_kv(cfg), [0, 1], [0, 0], prompts)
    with torch.no_grad():
        return model.compute_logits(model(fb.input_ids, fb.positions, fb))


def test_nvfp4_checkpoint_logits_equal_its_dequantized_weights(tmp_path: Path, demo: Path) -> None:
    q, d = write_pair(demo, tmp_path / "q", tmp_path / "d", nvfp4_quantize, NVFP4)
    tensors = load_file(str(q / "model.safetensors"))
    assert tensors["model.layers.0.mlp.down_proj.weight"].dtype == torch.uint8
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (128, 352 // 2)
    torch.testing.assert_close(_logits(q), _logits(d), atol=1e-4, rtol=1e-4)


def test_nvfp4_merged_slices_keep_their_own_global_scales(tmp_path: Path, demo: Path) -> None:
    """Doubling k_proj's global scale while halving its block scales is the same model (if each slice keeps its
    own global scale); a loader that shared one scale over q|k|v would change k's rows."""
    q, d = write_pair(demo, tmp_path / "q", tmp_path / "d", nvfp4_quantize, NVFP4)
    tensors = load_file(str(q / "model.safetensors"))
    for name in ("model.layers.0.self_attn.k_proj", "model.layers.1.mlp.up_proj"):
        halved = (tensors[name + ".weight_scale"].float() / 2).to(torch.float8_e4m3fn)
        assert torch.equal(halved.float() * 2, tensors[name + ".weight_scale"].float())  # exact in e4m3
        tensors[name + ".weight_scale"] = halved
        tensors[name + ".weight_scale_2"] = tensors[name + ".weight_scale_2"] * 2
    save_file(tensors, str(q / "model.safetensors"))
    torch.testing.assert_close(_logits(q), _logits(d), atol=1e-4, rtol=1e-4)


def test_nvfp4_nested_hf_quant_config_and_sglang_name_select_it(tmp_path: Path, demo: Path) -> None:
    registry = get_plugins().quantization_methods
    nested = {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4", "group_size": 16}}
    method = select_quantization("modelopt_fp4", nested, registry)
    assert method is not None and type(method.linear_method()).__name__ == "NvFp4LinearMethod"
    with pytest.raises(ValueError, match="modelopt: quant_algo 'W4A8_AWQ' is not supported; supported: NVFP4, FP8"):
        select_quantization(None, {"quant_method": "modelopt", "quant_algo": "W4A8_AWQ"}, registry)


def test_nvfp4_with_dummy_weights_runs(tmp_path: Path, demo: Path) -> None:
    q, _ = write_pair(demo, tmp_path / "q", tmp_path / "d", nvfp4_quantize, NVFP4)
    logits = _logits(q, load_format="dummy")
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_modelopt_fp8_checkpoint_loads_per_tensor_scales(tmp_path: Path, demo: Path) -> None:
    def quantize(name: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        scale = w.abs().max() / 448.0
        q = (w / scale).to(torch.float8_e4m3fn)
        base = name.removesuffix(".weight")
        return {name: q, base + ".weight_scale": scale.reshape(()), base + ".input_scale": torch.tensor(0.05)}, \
            q.float() * scale

    q, d = write_pair(demo, tmp_path / "q", tmp_path / "d", quantize, {"quant_method": "modelopt", "quant_algo": "FP8"})
    quant, ref = _logits(q), _logits(d)
    assert float((quant - ref).norm() / ref.norm()) < 0.2
