"""ModelOpt NVFP4 MoE checkpoints (every expert's projections as e2m1 pairs, e4m3 scales per 16 inputs, a global
scale per projection) compute exactly what their dequantized weights compute (the reference: activations
unquantized); ModelOpt FP8 experts take the per-tensor FP8 path. Packed by tests/quant/test_nvfp4.py's quantizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sgl.core.model.moe import FusedMoE
from tests.core.engine_utils import make_engine
from tests.models.tiny_moe import make_tiny_moe_model
from tests.quant.checkpoints import write_pair
from tests.quant.moe_ranks import first_moe_layer_output, one_and_two_ranks, prompt_logits
from tests.quant.test_moe_fp8 import REL_W8A8, _load, _rel_err, _rewrite
from tests.quant.test_nvfp4 import NVFP4, nvfp4_quantize

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nvfp4-moe")
    src = Path(make_tiny_moe_model("qwen3_moe", root / "src", seed=11))
    return write_pair(src, root / "q", root / "deq", nvfp4_quantize, NVFP4)


def test_experts_compute_their_dequantized_checkpoint_weights(pair: tuple[Path, Path]) -> None:
    """One MoE layer against the experts the test's quantizer dequantized: gate's and up's global scales differ, so
    a shared one shows; fp32, 1e-5."""
    q, d = pair
    model, _ = _load(q)
    dense = load_file(str(d / "model.safetensors"))
    name, layer, x, ids, weights, got = first_moe_layer_output(model)
    h = layer.hidden_size
    want = torch.zeros(6, h)
    for t in range(6):
        for j in range(2):
            w = {p: dense[f"{name}.{int(ids[t, j])}.{p}.weight"] for p in ("gate_proj", "up_proj", "down_proj")}
            act = torch.nn.functional.silu(x[t] @ w["gate_proj"].T) * (x[t] @ w["up_proj"].T)
            want[t] += weights[t, j] * (act @ w["down_proj"].T)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert layer.w13_weight.dtype == torch.uint8 and layer.w13_weight_scale.dtype == torch.float8_e4m3fn


def test_logits_and_engine_tokens_equal_the_dequantized_model(pair: tuple[Path, Path], demo_model_dir: Path) -> None:
    q, d = pair
    torch.testing.assert_close(prompt_logits(*_load(q)), prompt_logits(*_load(d)), atol=2e-4, rtol=1e-4)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 17)]
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    outs = []
    for path in (q, d):
        with make_engine(path, tokenizer_path=str(demo_model_dir)) as engine:
            outs.append([o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)])
    assert outs[0] == outs[1]


@pytest.mark.parametrize("suffix", ["weight_scale_2", "input_scale"])
def test_a_missing_expert_scale_is_a_load_error_naming_it(suffix: str, pair: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    q, _ = pair
    name = next(n for n in load_file(str(q / "model.safetensors")) if f".experts.3.up_proj.{suffix}" in n)
    with pytest.raises(ValueError, match=rf"missing tensor\(s\) {name.replace('.', '[.]')}"):
        _load(_rewrite(q, tmp_path, lambda t: t.pop(name)))


def test_a_mis_shaped_expert_scale_is_a_load_error_naming_it(pair: tuple[Path, Path], tmp_path: Path) -> None:
    q, _ = pair
    name = next(n for n in load_file(str(q / "model.safetensors")) if ".experts.1.down_proj.weight_scale" in n
                and not n.endswith("_2"))

    def edit(t: dict[str, torch.Tensor]) -> None:
        t[name] = t[name].T.contiguous()  # NOTE: [in/16, out]: the groups along the wrong dim

    with pytest.raises(ValueError, match=rf"tensor '{name.replace('.', '[.]')}': shape mismatch"):
        _load(_rewrite(q, tmp_path, edit))


def test_dummy_weights_fill_nvfp4_experts(pair: tuple[Path, Path]) -> None:
    from sgl.core.model.context import ModelContext
    from sgl.core.model.loader import load_model
    from sgl.core.platform import Platform
    from sgl.core.plugins import get_plugins
    from sgl.core.quant.base import select_quantization

    q, _ = pair
    plugins = get_plugins()
    method = select_quantization(None, NVFP4, plugins.quantization_methods, Platform())
    ctx = ModelContext.from_platform(Platform(), torch.float32, quant_config=method)
    model, config = load_model(str(q), ctx, load_format="dummy", models=plugins.models)
    logits = prompt_logits(model, config)
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_modelopt_fp8_experts_take_the_per_tensor_fp8_path(tmp_path: Path) -> None:
    def quantize(name: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        scale = w.abs().max() / 448.0
        q = (w / scale).to(torch.float8_e4m3fn)
        base = name.removesuffix(".weight")
        return {name: q, base + ".weight_scale": scale.reshape(()), base + ".input_scale": torch.tensor(0.05)}, \
            q.float() * scale

    src = Path(make_tiny_moe_model("qwen3_moe", tmp_path / "src", seed=12))
    q, d = write_pair(src, tmp_path / "q", tmp_path / "d", quantize, {"quant_method": "modelopt", "quant_algo": "FP8"})
    model, config = _load(q)
    layer = next(m for m in model.modules() if isinstance(m, FusedMoE))
    assert layer.w13_weight.dtype == torch.float8_e4m3fn and layer.w13_input_scale.shape == (1,)
    assert _rel_err(prompt_logits(model, config), prompt_logits(*_load(d))) < REL_W8A8


@pytest.mark.parametrize("ep", [1, 2], ids=["tp-experts", "expert-parallel"])
def test_two_ranks_of_an_nvfp4_moe_reproduce_one_rank(ep: int, tmp_path: Path) -> None:
    """TP halves each expert's 64 intermediate features (down's input by whole 16-feature groups, the global scales
    replicated); expert parallel gives each rank four experts whole. fp32: only summation order differs."""
    src = Path(make_tiny_moe_model("qwen3_moe", tmp_path / "src", seed=6, moe_intermediate_size=64))
    q, _ = write_pair(src, tmp_path / "q", tmp_path / "d", nvfp4_quantize, NVFP4)
    expected, results = one_and_two_ranks(q, NVFP4, ep)
    for got in results:
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
