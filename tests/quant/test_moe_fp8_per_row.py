"""Per-channel and per-tensor FP8 MoE checkpoints in their real layouts load and compute what their own tensors say:
compressed-tensors (llm-compressor: ``weight_scale`` [out, 1] or [1], dynamic per-token, static ``input_scale`` or
unquantized (W8A16) inputs; RedHat's Qwen3-30B-A3B-FP8-dynamic and Mixtral FP8 releases) and ``fp8`` without a block size (per-tensor
``weight_scale`` and static ``input_scale``, Mixtral's expert names ``w1``/``w3``/``w2``).

The checkpoints are written by tests/quant/test_fp8.py's compressed-tensors quantizer from the format's definition;
static input scales differ per projection and expert, so a layer must combine them (the largest per GEMM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.core.engine_utils import make_engine
from tests.models.tiny_moe import make_tiny_moe_model
from tests.quant.checkpoints import write_pair
from tests.quant.moe_ranks import first_moe_layer_output, one_and_two_ranks, prompt_logits
from tests.quant.test_fp8 import STATIC_INPUTS, TOKEN_INPUTS, ct_config, ct_quantizer
from tests.quant.test_moe_fp8 import REL_W8A8, _greedy_by_recompute, _load, _rel_err, _rewrite

pytest.importorskip("transformers")

FP8 = torch.float8_e4m3fn
MAX = 448.0
HF_TENSOR = {"quant_method": "fp8", "activation_scheme": "static"}


def moe_ct_config(strategy: str, inputs: dict[str, Any] | None, router: str = "re:.*mlp.gate$") -> dict[str, Any]:
    """As llm-compressor writes MoE releases: the routers left unquantized by a regex in ``ignore``."""
    return {**ct_config(strategy, inputs), "ignore": ["lm_head", router]}


# case -> (arch, weight strategy, inputs: token / static / none, quantization_config)
CASES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "ct-channel-token": ("qwen3_moe", "channel", "token", moe_ct_config("channel", TOKEN_INPUTS)),
    "ct-tensor-static": ("qwen3_moe", "tensor", "static", moe_ct_config("tensor", STATIC_INPUTS)),
    "fp8-tensor-static-mixtral": ("mixtral", "tensor", "static", HF_TENSOR),
    "ct-channel-weight-only-mixtral": ("mixtral", "channel", "none",
                                       moe_ct_config("channel", None, "re:.*block_sparse_moe.gate")),
}
PROJ = {"qwen3_moe": ("gate_proj", "up_proj", "down_proj"), "mixtral": ("w1", "w3", "w2")}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    arch, strategy, inputs, config = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    src = Path(make_tiny_moe_model(arch, root / "src", seed=7))
    q, d = write_pair(src, root / "q", root / "deq", ct_quantizer(strategy, inputs == "static"), config)
    return request.param, q, d


def test_experts_compute_the_scaled_gemms_of_their_checkpoint_tensors(case: tuple[str, Path, Path]) -> None:
    """Each expert's gate | up and down from its own e4m3 values and scales (a per-tensor scale differs between gate
    and up), inputs per token, by the layer's largest static scale per GEMM, or unrounded (weight-only); fp32, so
    1e-5 pins the layout."""
    name_, q, _ = case
    arch, _, inputs, _ = CASES[name_]
    gate, up, down = PROJ[arch]
    model, _ = _load(q)
    tensors = load_file(str(q / "model.safetensors"))
    module, layer, x, ids, weights, got = first_moe_layer_output(model)
    layer_prefix = module.split(".mlp.")[0] + "."  # NOTE: Mixtral's checkpoint says block_sparse_moe where sgl has mlp
    name = next(k.split(".experts.")[0] + ".experts" for k in tensors if k.startswith(layer_prefix) and ".experts." in k)
    e, h = layer.num_experts, layer.hidden_size

    def deq(expert: int, proj: str) -> torch.Tensor:
        key = f"{name}.{expert}.{proj}"
        return tensors[f"{key}.weight"].float() * tensors[f"{key}.weight_scale"].float()

    def input_scale(projs: tuple[str, ...]) -> torch.Tensor:
        return torch.stack([tensors[f"{name}.{x_}.{p}.input_scale"].reshape(()) for x_ in range(e) for p in projs]).max()

    def fake_quant(v: torch.Tensor, projs: tuple[str, ...]) -> torch.Tensor:
        if inputs == "none":
            return v
        if inputs == "static":
            scale = input_scale(projs)
        else:
            scale = (v.abs().amax(dim=1, keepdim=True) * (1.0 / MAX)).clamp(min=1e-12)
        return (v / scale).clamp(-MAX, MAX).to(FP8).float() * scale

    want = torch.zeros(6, h)
    for t in range(6):
        for j in range(2):
            ex = int(ids[t, j])
            xq = fake_quant(x[t:t + 1], (gate, up))
            act = torch.nn.functional.silu(xq @ deq(ex, gate).T) * (xq @ deq(ex, up).T)
            want[t] += weights[t, j] * (fake_quant(act, (down,)) @ deq(ex, down).T)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert layer.w13_weight.dtype == FP8 and layer.w13_weight_scale.shape == (e, layer.w13_weight.shape[1], 1)


def test_checkpoint_is_close_to_its_dequantized_model(case: tuple[str, Path, Path]) -> None:
    """W8A8 within the e4m3 rounding of activations; weight-only (W8A16 in fp32) is the dequantized model's logits."""
    name_, q, d = case
    got, want = prompt_logits(*_load(q)), prompt_logits(*_load(d))
    if CASES[name_][2] == "none":
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    else:
        assert _rel_err(got, want) < REL_W8A8


@pytest.mark.parametrize("case", ["ct-channel-token", "fp8-tensor-static-mixtral"], indirect=True)
def test_engine_serves_a_per_row_fp8_moe_checkpoint(case: tuple[str, Path, Path], demo_model_dir: Path) -> None:
    """Through the scheduler, paged cache and decode, greedy tokens are the fp8 model's own (per-token or static
    scales make a token's arithmetic independent of its batch)."""
    _, q, _ = case
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 17)]
    with make_engine(q, tokenizer_path=str(demo_model_dir)) as engine:
        got = engine.generate(input_ids=prompts, sampling_params={"temperature": 0, "max_new_tokens": 6,
                                                                  "ignore_eos": True})
    model, config = _load(q)
    assert [o["output_ids"] for o in got] == [_greedy_by_recompute(model, config, p, 6) for p in prompts]


@pytest.mark.parametrize("suffix", ["weight_scale", "input_scale"])
def test_a_missing_expert_scale_is_a_load_error_naming_it(suffix: str, tmp_path: Path,
                                                          case: tuple[str, Path, Path]) -> None:
    name_, q, _ = case
    if suffix == "input_scale" and CASES[name_][2] != "static":
        pytest.skip("only static inputs have an input_scale")
    up = PROJ[CASES[name_][0]][1]
    name = next(n for n in load_file(str(q / "model.safetensors")) if f".experts.3.{up}.{suffix}" in n)
    # NOTE: Mixtral's loader renames block_sparse_moe to mlp before the experts see the names
    shown = name.replace(".", "[.]").replace("block_sparse_moe", "mlp")
    with pytest.raises(ValueError, match=rf"missing tensor\(s\) {shown}"):
        _load(_rewrite(q, tmp_path, lambda t: t.pop(name)))


def test_a_mis_shaped_expert_scale_is_a_load_error_naming_it(tmp_path: Path, case: tuple[str, Path, Path]) -> None:
    name_, q, _ = case
    down = PROJ[CASES[name_][0]][2]
    name = next(n for n in load_file(str(q / "model.safetensors")) if f".experts.1.{down}.weight_scale" in n)

    def edit(t: dict[str, torch.Tensor]) -> None:
        # NOTE: a per-channel scale transposed; a per-tensor one given per channel
        t[name] = t[name].T.contiguous() if t[name].numel() > 1 else t[name].repeat(4)

    shown = name.replace(".", "[.]").replace("block_sparse_moe", "mlp")
    with pytest.raises(ValueError, match=rf"tensor '{shown}': shape mismatch"):
        _load(_rewrite(q, tmp_path, edit))


@pytest.mark.parametrize("ep", [1, 2], ids=["tp-experts", "expert-parallel"])
def test_two_ranks_of_a_static_per_tensor_moe_reproduce_one_rank(ep: int, tmp_path: Path) -> None:
    """TP halves each expert's intermediate features (per-tensor scales replicate, the largest input scale is the
    same on both ranks); EP gives each rank four experts whole. Bound as in test_moe_fp8's two-rank test."""
    config = CASES["ct-tensor-static"][3]
    src = Path(make_tiny_moe_model("qwen3_moe", tmp_path / "src", seed=6, moe_intermediate_size=64))
    q, _ = write_pair(src, tmp_path / "q", tmp_path / "d", ct_quantizer("tensor", True), config)
    expected, results = one_and_two_ranks(q, config, ep)
    for got in results:
        torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)


def test_router_regexes_in_ignore_load_and_a_linear_there_is_still_refused() -> None:
    from sgl.plugins.quant.compressed_tensors import CompressedTensorsMethod

    config = moe_ct_config("channel", TOKEN_INPUTS)
    assert CompressedTensorsMethod.from_config(config).scheme.weight == "channel"
    for entry in ("re:.*mlp.down_proj$", "re:.*experts.*"):
        with pytest.raises(ValueError, match="leave linear layers unquantized"):
            CompressedTensorsMethod.from_config({**config, "ignore": ["lm_head", "re:.*mlp.gate$", entry]})
