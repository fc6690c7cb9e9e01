"""FP8 checkpoints in their real layouts (HF block-wise, compressed-tensors per-channel / per-tensor, online) load
and compute what their dequantized weights compute; wrong or missing scales are load errors naming the tensor."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from sgl.core.demo_model import write_demo_model
from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.platform import Platform
from sgl.core.plugins import get_plugins
from sgl.core.quant.base import select_quantization
from sgl.plugins.quant import fp8_math as fm
from tests.core.tiny_models import build_forward_batch, make_paged_kv
from tests.quant.checkpoints import Quantizer, write_pair

FP8 = torch.float8_e4m3fn
MAX = 448.0


def _q(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (w / scale).clamp(-MAX, MAX).to(FP8)


def block_quantizer(block: int) -> Quantizer:
    """DeepSeek/Qwen3 FP8: ``weight`` e4m3 and ``weight_scale_inv`` [ceil(out/b), ceil(in/b)] (a multiplier)."""

    def quantize(name: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        out, inp = w.shape
        rb, cb = -(-out // block), -(-inp // block)
        scale = torch.empty(rb, cb)
        for i in range(rb):
            for j in range(cb):
                tile = w[i * block:(i + 1) * block, j * block:(j + 1) * block]
                scale[i, j] = tile.abs().max().clamp(min=1e-12) / MAX
        full = scale.repeat_interleave(block, 0)[:out].repeat_interleave(block, 1)[:, :inp]
        q = _q(w, full)
        return {name: q, name.replace(".weight", ".weight_scale_inv"): scale}, q.float() * full

    return quantize


def ct_quantizer(strategy: str, static_inputs: bool = False) -> Quantizer:
    """compressed-tensors: ``weight`` e4m3, ``weight_scale`` [out, 1] (channel) or [1] (tensor); ``input_scale`` [1]."""

    def quantize(name: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if strategy == "channel":
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / MAX
        else:
            scale = (w.abs().max().clamp(min=1e-12) / MAX).reshape(1)
        q = _q(w, scale)
        parts = {name: q, name.replace(".weight", ".weight_scale"): scale}
        if static_inputs:
            # NOTE: a different calibration per projection, so merged layers must combine their slices' scales.
            parts[name.replace(".weight", ".input_scale")] = torch.tensor([0.02 + 0.001 * (sum(name.encode()) % 7)])
        return parts, q.float() * scale

    return quantize


def ct_config(strategy: str, inputs: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "ignore": ["lm_head"],
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": strategy, "symmetric": True,
                            "dynamic": False},
                "input_activations": inputs,
            }
        },
    }


TOKEN_INPUTS = {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True, "dynamic": True}
STATIC_INPUTS = {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True, "dynamic": False}
HF_BLOCK = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [128, 128]}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("fp8") / "demo", seed=3, num_layers=2)


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every projection a whole number of 128-blocks (kv 128 rows, mlp 512), as in real FP8 releases."""
    return write_demo_model(
        tmp_path_factory.mktemp("fp8") / "wide", seed=4, num_layers=2, hidden_size=256, num_attention_heads=2,
        num_key_value_heads=1, head_dim=128, intermediate_size=512, vocab_size=512,
    )


def _logits(path: Path, quantization: str | None = None, load_format: str = "auto") -> torch.Tensor:
    plugins = get_plugins()
    config = json.loads((path / "config.json").read_text())
    method = select_quantization(quantization, config.get("quantization_config"), plugins.quantization_methods,
                                 Platform())
    ctx = ModelContext.from_platform(Platform(), torch.float32, quant_config=method)
    model, cfg = load_model(str(path), ctx, load_format=load_format, models=plugins.models)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, cfg.vocab_size) for _ in range(n)] for n in (7, 19)]
    paged = make_paged_kv(cfg)
    fb = build_forward_batch(paged, [0, 1], [0, 0], prompts)
    with torch.no_grad():
        return model.compute_logits(model(fb.input_ids, fb.positions, fb))


def _pair(tmp_path: Path, src: Path, quantize: Quantizer, config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    q, d = write_pair(src, tmp_path / "q", tmp_path / "deq", quantize, config)
    return _logits(q), _logits(d)


# NOTE: rounding every activation through e4m3 (3 mantissa bits) moves these random tiny models' logits by ~10%;
# a misread layout (a transposed or misplaced scale) moves them by ~100%. The exact arithmetic is pinned per layer
# by test_every_projection_computes_the_scaled_gemm_of_its_checkpoint below.
REL_W8A8 = 0.2


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_hf_block_fp8_128_checkpoint_computes_its_dequantized_weights(tmp_path: Path, wide: Path) -> None:
    """W8A8 (dynamic per-token-group activations): the only difference from the dequantized model is the rounding
    of activations through e4m3, a relative error of a few percent at most, and the argmax mostly agrees."""
    quant, ref = _pair(tmp_path, wide, block_quantizer(128), HF_BLOCK)
    assert _rel_err(quant, ref) < REL_W8A8
    assert (quant.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_hf_block_fp8_with_a_partial_last_block_and_small_blocks_loads(tmp_path: Path, demo: Path) -> None:
    """Demo model: kv slices of 64 rows and an MLP of 352 = 11 x 32; blocks of 32 merge exactly."""
    config = dict(HF_BLOCK, weight_block_size=[32, 32])
    quant, ref = _pair(tmp_path, demo, block_quantizer(32), config)
    assert _rel_err(quant, ref) < REL_W8A8


def test_hf_block_fp8_refuses_merged_slices_that_split_a_block(tmp_path: Path, demo: Path) -> None:
    q, _ = write_pair(demo, tmp_path / "q", tmp_path / "d", block_quantizer(128), HF_BLOCK)
    with pytest.raises(ValueError, match=r"merged output slices \[128, 64, 64\] are not whole blocks of 128"):
        _logits(q)


@pytest.mark.parametrize("strategy", ["channel", "tensor"])
def test_compressed_tensors_fp8_weight_only_equals_dequantized_weights(
    tmp_path: Path, demo: Path, strategy: str
) -> None:
    quant, ref = _pair(tmp_path, demo, ct_quantizer(strategy), ct_config(strategy, None))
    torch.testing.assert_close(quant, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("strategy", "inputs", "static"), [
    ("channel", TOKEN_INPUTS, False), ("tensor", STATIC_INPUTS, True), ("channel", STATIC_INPUTS, True),
])
def test_compressed_tensors_fp8_w8a8_is_close_to_dequantized_weights(
    tmp_path: Path, demo: Path, strategy: str, inputs: dict[str, Any], static: bool
) -> None:
    quant, ref = _pair(tmp_path, demo, ct_quantizer(strategy, static), ct_config(strategy, inputs))
    assert _rel_err(quant, ref) < REL_W8A8
    assert not torch.equal(quant, ref)  # the activations really went through e4m3


def _fake_quant(x: torch.Tensor, group: int) -> torch.Tensor:
    rows, cols = x.shape
    g = x.view(rows, cols // group, group)
    scale = g.abs().amax(-1, keepdim=True) / MAX
    return ((g / scale).clamp(-MAX, MAX).to(FP8).float() * scale).view(rows, cols)


def _load(path: Path) -> Any:
    plugins = get_plugins()
    config = json.loads((path / "config.json").read_text())
    method = select_quantization(None, config.get("quantization_config"), plugins.quantization_methods)
    ctx = ModelContext.from_platform(Platform(), torch.float32, quant_config=method)
    return load_model(str(path), ctx, models=plugins.models)[0]


@pytest.mark.parametrize("fmt", ["block", "ct-token", "ct-static-tensor"])
def test_every_projection_computes_the_scaled_gemm_of_its_checkpoint(tmp_path: Path, wide: Path, fmt: str) -> None:
    """Layer by layer, exactly: output = fake-quantized input @ dequantized checkpoint weight^T (merged q|k|v and
    gate|up included), with activations quantized as the format says (per token and 128 features, per token, or
    by the largest static input_scale of the merged projections)."""
    if fmt == "block":
        quantize, config = block_quantizer(128), HF_BLOCK
    elif fmt == "ct-token":
        quantize, config = ct_quantizer("channel"), ct_config("channel", TOKEN_INPUTS)
    else:
        quantize, config = ct_quantizer("tensor", True), ct_config("tensor", STATIC_INPUTS)
    q, d = write_pair(wide, tmp_path / "q", tmp_path / "d", quantize, config)
    model = _load(q)
    dense = load_file(str(d / "model.safetensors"))
    raw = load_file(str(q / "model.safetensors"))
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(1))
    prefix = "model.layers.1."
    for layer, parts in (("self_attn.qkv_proj", ["q_proj", "k_proj", "v_proj"]),
                         ("mlp.gate_up_proj", ["gate_proj", "up_proj"])):
        module = model.get_submodule(prefix + layer)
        sub = prefix + layer.split(".")[0] + "."
        w = torch.cat([dense[sub + p + ".weight"] for p in parts])
        if fmt == "block":
            xq = _fake_quant(x, 128)
        elif fmt == "ct-token":
            xq = _fake_quant(x, 256)
        else:
            scale = max(float(raw[sub + p + ".input_scale"]) for p in parts)
            xq = (x / scale).clamp(-MAX, MAX).to(FP8).float() * scale
        torch.testing.assert_close(module(x), xq @ w.T, atol=1e-5, rtol=1e-5)


def test_online_fp8_is_close_to_the_dense_model(demo: Path) -> None:
    quant, ref = _logits(demo, "fp8"), _logits(demo)
    assert _rel_err(quant, ref) < REL_W8A8
    assert not torch.equal(quant, ref)


def test_online_fp8_with_dummy_weights_runs(demo: Path) -> None:
    logits = _logits(demo, "fp8", load_format="dummy")
    assert torch.isfinite(logits).all()


def test_serialized_fp8_with_dummy_weights_runs(tmp_path: Path, wide: Path) -> None:
    q, _ = write_pair(wide, tmp_path / "q", tmp_path / "d", block_quantizer(128), HF_BLOCK)
    logits = _logits(q, load_format="dummy")
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_a_missing_scale_is_a_load_error_naming_the_tensor(tmp_path: Path, demo: Path) -> None:
    q, _ = write_pair(demo, tmp_path / "q", tmp_path / "d", ct_quantizer("channel"), ct_config("channel", None))
    tensors = load_file(str(q / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight_scale"]
    save_file(tensors, str(q / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight_scale"):
        _logits(q)


def test_a_wrongly_shaped_scale_is_a_load_error_naming_the_tensor(tmp_path: Path, wide: Path) -> None:
    q, _ = write_pair(wide, tmp_path / "q", tmp_path / "d", block_quantizer(128), HF_BLOCK)
    tensors = load_file(str(q / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight_scale_inv"
    tensors[name] = tensors[name][:, :1].contiguous()
    save_file(tensors, str(q / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"tensor '{name}': shape mismatch"):
        _logits(q)


def test_fp8_flag_on_another_methods_checkpoint_is_refused(tmp_path: Path, demo: Path) -> None:
    q, _ = write_pair(demo, tmp_path / "q", tmp_path / "d", ct_quantizer("channel"), ct_config("channel", None))
    with pytest.raises(ValueError, match="--quantization fp8 cannot read a 'compressed-tensors' checkpoint"):
        _logits(q, "fp8")


def test_a_platform_without_float8_tensors_refuses_fp8_in_one_line() -> None:
    class NoFloat8(Platform):
        name = "nofp8"

        def device(self, index: int = 0) -> torch.device:
            return torch.device("meta")

    class Broken(NoFloat8):
        pass

    registry = get_plugins().quantization_methods
    method = select_quantization("fp8", None, registry)
    assert method is not None
    method.check_platform(Platform())  # the cpu reference runs
    import unittest.mock as mock

    with mock.patch("torch.zeros", side_effect=RuntimeError("float8 is not supported\nmore")), \
            pytest.raises(ValueError) as info:
        select_quantization("fp8", None, registry, Broken())
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("--quantization fp8: the nofp8 platform cannot run it")
    assert "runs on the cpu platform and on CUDA GPUs" in message


def test_dynamic_scales_are_amax_times_the_fp32_reciprocal_on_every_device() -> None:
    """torch on CUDA turns ``amax / 448`` into ``amax * fp32(1/448)`` (the CPU divides): the reference writes the
    multiply so its fp8 rounding, and the fused kernels that copy it, agree bit for bit on every device."""
    x = torch.rand(4096, 64) * torch.exp(torch.randn(4096, 1) * 4)
    amax = x.abs().amax(dim=-1, keepdim=True)
    expect = (amax * torch.tensor(1.0 / fm.FP8_MAX, dtype=torch.float32)).clamp(min=1e-12)
    assert torch.equal(fm.per_row_scale(x), expect)
    assert torch.equal(fm.quantize_per_token_group(x, 64)[1], expect)
    assert not torch.equal(expect, amax / torch.full_like(amax, fm.FP8_MAX)), "no amax where the two differ"
