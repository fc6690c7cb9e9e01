"""AWQ and GPTQ MoE checkpoints in their real layouts (every expert's ``gate_proj``/``up_proj``/``down_proj``, or
Mixtral's ``w1``/``w3``/``w2``, with ``qweight``/``qzeros``/``scales`` and GPTQ's ``g_idx``) compute exactly what
their dequantized weights compute: per layer, through the model's logits, and through the engine's greedy tokens.

The checkpoints are packed by tests/quant/test_int4.py's quantizers from the formats' definitions. Groups of 32 (real
releases use 128; these experts have 32 or 64 intermediate features).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.core.engine_utils import make_engine
from tests.models.tiny_moe import make_tiny_moe_model
from tests.quant.checkpoints import Quantizer, write_pair
from tests.quant.moe_ranks import first_moe_layer_output, one_and_two_ranks, prompt_logits
from tests.quant.test_int4 import awq_config, awq_quantizer, gptq_config, gptq_quantizer
from tests.quant.test_moe_fp8 import _load, _rewrite

pytest.importorskip("transformers")

G = 32
# case -> (arch, quantizer, quantization_config)
CASES: dict[str, tuple[str, Quantizer, dict[str, Any]]] = {
    "qwen3-awq": ("qwen3_moe", awq_quantizer(G), awq_config(G)),
    "qwen3-gptq": ("qwen3_moe", gptq_quantizer(G, False), gptq_config(G, False)),
    "qwen3-gptq-desc-act": ("qwen3_moe", gptq_quantizer(G, True), gptq_config(G, True)),
    "mixtral-gptq-desc-act-asym-v2": ("mixtral", gptq_quantizer(G, True, True, False), gptq_config(G, True, True, False)),
}
PROJ = {"qwen3_moe": ("gate_proj", "up_proj", "down_proj"), "mixtral": ("w1", "w3", "w2")}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    arch, quantize, config = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    src = Path(make_tiny_moe_model(arch, root / "src", seed=9))
    q, d = write_pair(src, root / "q", root / "deq", quantize, config)
    return request.param, q, d


def test_experts_compute_their_dequantized_checkpoint_weights(case: tuple[str, Path, Path]) -> None:
    """One MoE layer against the experts the test's own quantizer dequantized (fp32: 1e-5 pins which expert, gate
    before up, the nibble order, zeros and groups)."""
    name_, q, d = case
    gate, up, down = PROJ[CASES[name_][0]]
    model, _ = _load(q)
    dense = load_file(str(d / "model.safetensors"))
    module, layer, x, ids, weights, got = first_moe_layer_output(model)
    layer_prefix = module.split(".mlp.")[0] + "."  # NOTE: Mixtral's checkpoint says block_sparse_moe where sgl has mlp
    name = next(k.split(".experts.")[0] + ".experts" for k in dense if k.startswith(layer_prefix) and ".experts." in k)
    e, h = layer.num_experts, layer.hidden_size
    want = torch.zeros(6, h)
    for t in range(6):
        for j in range(2):
            w = {p: dense[f"{name}.{int(ids[t, j])}.{p}.weight"] for p in (gate, up, down)}
            act = torch.nn.functional.silu(x[t] @ w[gate].T) * (x[t] @ w[up].T)
            want[t] += weights[t, j] * (act @ w[down].T)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert layer.w13_qweight.dtype == torch.int32 and layer.w13_scales.shape[0] == e


def test_logits_equal_the_dequantized_model(case: tuple[str, Path, Path]) -> None:
    _, q, d = case
    torch.testing.assert_close(prompt_logits(*_load(q)), prompt_logits(*_load(d)), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["qwen3-awq", "qwen3-gptq-desc-act"], indirect=True)
def test_engine_greedy_tokens_equal_the_dequantized_model(case: tuple[str, Path, Path], demo_model_dir: Path) -> None:
    """W4A16 in fp32 computes the dequantized model's arithmetic, so the whole engine (scheduler, paged cache,
    decode) gives the dense checkpoint's greedy tokens."""
    _, q, d = case
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 17)]
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    outs = []
    for path in (q, d):
        with make_engine(path, tokenizer_path=str(demo_model_dir)) as engine:
            outs.append([o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)])
    assert outs[0] == outs[1]


def _shown(name: str) -> str:
    # NOTE: Mixtral's loader renames block_sparse_moe to mlp before the experts see the names
    return name.replace(".", "[.]").replace("block_sparse_moe", "mlp")


@pytest.mark.parametrize("suffix", ["qzeros", "scales", "g_idx"])
def test_a_missing_expert_tensor_is_a_load_error_naming_it(suffix: str, tmp_path: Path,
                                                           case: tuple[str, Path, Path]) -> None:
    name_, q, _ = case
    if suffix == "g_idx" and "desc-act" not in name_:
        pytest.skip("only act order needs g_idx")
    up = PROJ[CASES[name_][0]][1]
    name = next(n for n in load_file(str(q / "model.safetensors")) if f".experts.3.{up}.{suffix}" in n)
    with pytest.raises(ValueError, match=rf"missing tensor\(s\) {_shown(name)}"):
        _load(_rewrite(q, tmp_path, lambda t: t.pop(name)))


@pytest.mark.parametrize("suffix", ["qzeros", "scales"])
def test_a_mis_shaped_expert_tensor_is_a_load_error_naming_it(suffix: str, tmp_path: Path,
                                                              case: tuple[str, Path, Path]) -> None:
    name_, q, _ = case
    down = PROJ[CASES[name_][0]][2]
    name = next(n for n in load_file(str(q / "model.safetensors")) if f".experts.1.{down}.{suffix}" in n)

    def edit(t: dict[str, torch.Tensor]) -> None:
        t[name] = t[name][:, : t[name].shape[1] // 2].contiguous()  # NOTE: half the columns, as a wrong pack gives

    with pytest.raises(ValueError, match=rf"tensor '{_shown(name)}': shape mismatch"):
        _load(_rewrite(q, tmp_path, edit))


@pytest.mark.parametrize("case", ["qwen3-gptq-desc-act"], indirect=True)
def test_gate_and_up_with_different_act_orders_are_a_load_error(tmp_path: Path, case: tuple[str, Path, Path]) -> None:
    """Gate and up share one g_idx per expert (they read the same input); a checkpoint where they differ is refused
    rather than computed with one of them."""
    _, q, _ = case
    name = next(n for n in load_file(str(q / "model.safetensors")) if ".experts.2.up_proj.g_idx" in n)

    def edit(t: dict[str, torch.Tensor]) -> None:
        t[name] = t[name].flip(0).contiguous()

    with pytest.raises(ValueError, match=rf"tensor '{_shown(name)}': expert 2: gate and up projections differ"):
        _load(_rewrite(q, tmp_path, edit))


def test_dummy_weights_fill_int4_experts(case: tuple[str, Path, Path]) -> None:
    """``--load-format dummy`` with an AWQ or GPTQ config (benchmarks of a release without its download)."""
    from sgl.core.model.context import ModelContext
    from sgl.core.model.loader import load_model
    from sgl.core.platform import Platform
    from sgl.core.plugins import get_plugins
    from sgl.core.quant.base import select_quantization

    name_, q, _ = case
    plugins = get_plugins()
    method = select_quantization(None, CASES[name_][2], plugins.quantization_methods, Platform())
    ctx = ModelContext.from_platform(Platform(), torch.float32, quant_config=method)
    model, config = load_model(str(q), ctx, load_format="dummy", models=plugins.models)
    logits = prompt_logits(model, config)
    assert torch.isfinite(logits).all() and logits.std() > 0


@pytest.mark.parametrize("name_", ["qwen3-awq", "qwen3-gptq", "qwen3-gptq-desc-act"])
@pytest.mark.parametrize("ep", [1, 2], ids=["tp-experts", "expert-parallel"])
def test_two_ranks_of_an_int4_moe_reproduce_one_rank(name_: str, ep: int, tmp_path: Path) -> None:
    """TP halves each expert's 64 intermediate features: gate | up by output words, down by input rows with its
    groups (whole groups of 32 here; under act order every group stays and the sharded g_idx indexes them); expert
    parallel gives each rank four experts whole. W4A16 in fp32: only summation order differs."""
    _, quantize, config = CASES[name_]
    src = Path(make_tiny_moe_model("qwen3_moe", tmp_path / "src", seed=6, moe_intermediate_size=64))
    q, _ = write_pair(src, tmp_path / "q", tmp_path / "d", quantize, config)
    expected, results = one_and_two_ranks(q, config, ep)
    for got in results:
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_tp_split_of_down_inside_a_group_is_refused_in_one_line() -> None:
    """Qwen3-30B-A3B's 768 intermediate features over 8 ranks are 96 a rank: not whole groups of 128."""
    from torch import nn

    from sgl.plugins.quant.int4_linear import Int4Scheme
    from sgl.plugins.quant.int4_moe import Int4MoEMethod

    layer = nn.Module()
    layer.tp_size = 8  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"awq experts: the intermediate size on this rank \(96\) .* 128-feature"):
        Int4MoEMethod(Int4Scheme("awq", 128)).create_weights(layer, 4, 256, 96, torch.float32)


@pytest.mark.parametrize("case", ["qwen3-gptq"], indirect=True)
def test_a_quantized_router_is_a_load_error_naming_it(tmp_path: Path, case: tuple[str, Path, Path]) -> None:
    """sgl never quantizes the router: a checkpoint that did is refused at load, not served with a wrong router."""
    _, q, _ = case
    router = next(n for n in load_file(str(q / "model.safetensors")) if n.endswith(".mlp.gate.weight"))

    def edit(t: dict[str, torch.Tensor]) -> None:
        w = t.pop(router)
        t[router.replace(".weight", ".qweight")] = torch.zeros(w.shape[1] // 8, w.shape[0], dtype=torch.int32)

    with pytest.raises(ValueError, match=r"unexpected tensor '.*mlp[.]gate[.]qweight'"):
        _load(_rewrite(q, tmp_path, edit))
