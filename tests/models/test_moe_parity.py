"""MoE and MLA models reproduce Hugging Face's logits on the same tiny weights (fp32), over a paged KV pool."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.platform import Platform
from sgl.core.runner.forward_batch import ForwardMode
from tests.core.tiny_models import build_forward_batch, load_hf_model
from tests.models.tiny_moe import MOE_ARCHS, make_tiny_moe_model
from tests.models.paged import make_model_paged_kv

pytest.importorskip("transformers")

ATOL = 1e-4


def _prompts(lengths: list[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 256) for _ in range(n)] for n in lengths]


@pytest.fixture(scope="module", params=MOE_ARCHS)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    path = make_tiny_moe_model(request.param, tmp_path_factory.mktemp(request.param), seed=7)
    model, config = load_model(path, ModelContext.from_platform(Platform(), torch.float32))
    return load_hf_model(path), model, config


def _hf_logits(hf: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


def _ours(model: Any, fb: Any) -> torch.Tensor:
    with torch.no_grad():
        return model.compute_logits(model(fb.input_ids, fb.positions, fb))


def test_batched_prefill_logits_equal_hf(pair: tuple[Any, Any, Any]) -> None:
    hf, model, config = pair
    prompts = _prompts([5, 17, 40], seed=1)
    fb = build_forward_batch(make_model_paged_kv(model, config), [2, 0, 5], [0, 0, 0], prompts)
    expected = torch.cat([_hf_logits(hf, p) for p in prompts])
    torch.testing.assert_close(_ours(model, fb), expected, atol=ATOL, rtol=0)


def test_extend_over_cached_prefix_then_decode_equal_hf(pair: tuple[Any, Any, Any]) -> None:
    """Prefill a prefix, extend over the cached slots, then decode token by token; every position matches HF."""
    hf, model, config = pair
    seqs = _prompts([21, 14], seed=2)
    paged = make_model_paged_kv(model, config, seed=3)
    rows, pos, got = [3, 1], [0, 0], [[], []]  # type: ignore[var-annotated]

    def step(ends: list[int], mode: ForwardMode | None = None) -> None:
        active = [i for i in range(2) if ends[i] > pos[i]]
        fb = build_forward_batch(
            paged, [rows[i] for i in active], [pos[i] for i in active], [seqs[i][pos[i]:ends[i]] for i in active], mode
        )
        logits, offset = _ours(model, fb), 0
        for i in active:
            n = ends[i] - pos[i]
            got[i].append(logits[offset:offset + n])
            offset, pos[i] = offset + n, ends[i]

    step([6, 4])
    step([16, 9])
    while pos[0] < len(seqs[0]) or pos[1] < len(seqs[1]):
        ends = [min(p + 1, len(s)) for p, s in zip(pos, seqs)]
        step(ends, ForwardMode.DECODE if all(e > p for e, p in zip(ends, pos)) else None)
    for i in range(2):
        torch.testing.assert_close(torch.cat(got[i]), _hf_logits(hf, seqs[i]), atol=ATOL, rtol=0)


def test_routing_chooses_several_experts_per_layer(pair: tuple[Any, Any, Any]) -> None:
    """The tiny configs exercise routing: across a prompt's tokens, every sparse layer uses more than top_k experts."""
    _, model, config = pair
    blocks = [m for m in model.modules() if type(m).__name__ == "SparseMoeBlock"]
    assert blocks, "no sparse layer was built"
    hidden = torch.randn(32, config.hidden_size, generator=torch.Generator().manual_seed(0))
    for block in blocks:
        ids = block.gate(hidden).ids
        assert len(ids.unique()) > block.gate.routing.top_k


YARN = {
    "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
    "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8,
}


@pytest.mark.parametrize("arch", ["deepseek_v2", "deepseek_v3"])
def test_yarn_scaled_deepseek_logits_equal_hf(arch: str, tmp_path: Any) -> None:
    """DeepSeek's real configs use YaRN: the rope table (with its cos/sin factor) and MLA's mscale^2 softmax scale."""
    path = make_tiny_moe_model(arch, tmp_path, seed=5, num_hidden_layers=2, max_position_embeddings=64,
                               rope_parameters=dict(YARN))
    model, config = load_model(path, ModelContext.from_platform(Platform(), torch.float32))
    assert config.rope_scaling is not None and config.rope_scaling["rope_type"] == "yarn"
    prompt = _prompts([50], seed=6)[0]
    fb = build_forward_batch(make_model_paged_kv(model, config), [0], [0], [prompt])
    torch.testing.assert_close(_ours(model, fb), _hf_logits(load_hf_model(path), prompt), atol=ATOL, rtol=0)
