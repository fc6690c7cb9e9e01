"""Our model graph + torch-native paged attention reproduce Hugging Face's logits on the same weights (fp32)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.model.rotary import get_rope
from sgl.core.platform import Platform
from sgl.core.runner.forward_batch import ForwardMode
from tests.core.tiny_models import (
    ARCHS,
    build_forward_batch,
    load_hf_model,
    make_paged_kv,
    make_tiny_hf_model,
)

ATOL = 1e-4


def _ctx() -> ModelContext:
    return ModelContext.from_platform(Platform(), torch.float32)


def _prompts(lengths: list[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 256) for _ in range(n)] for n in lengths]


@pytest.fixture(scope="module", params=ARCHS)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    path = make_tiny_hf_model(request.param, tmp_path_factory.mktemp(request.param), seed=7)
    model, config = load_model(path, _ctx())
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
    paged = make_paged_kv(config)
    fb = build_forward_batch(paged, [2, 0, 5], [0, 0, 0], prompts)
    logits = _ours(model, fb)
    assert logits.dtype == torch.float32 and logits.shape == (62, config.vocab_size)
    expected = torch.cat([_hf_logits(hf, p) for p in prompts])
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_extend_over_cached_prefix_then_decode_equal_hf(pair: tuple[Any, Any, Any]) -> None:
    """Prefill a prefix, extend the rest over the cached slots, one MIXED step, then decode; every position matches."""
    hf, model, config = pair
    seqs = _prompts([24, 15], seed=2)
    cut, decode_from = [6, 4], [20, 11]  # prefix | extend | decode (teacher-forced tokens from the sequence)
    paged = make_paged_kv(config, seed=3)
    rows = [3, 1]
    got: list[list[torch.Tensor]] = [[], []]

    def step(pos: list[int], ends: list[int], mode: ForwardMode | None = None) -> None:
        active = [i for i in range(2) if ends[i] > pos[i]]
        fb = build_forward_batch(
            paged, [rows[i] for i in active], [pos[i] for i in active],
            [seqs[i][pos[i] : ends[i]] for i in active], mode,
        )
        logits = _ours(model, fb)
        offset = 0
        for i in active:
            n = ends[i] - pos[i]
            got[i].append(logits[offset : offset + n])
            offset += n
            pos[i] = ends[i]

    pos = [0, 0]
    step(pos, cut)  # prefill of the prefixes
    step(pos, decode_from)  # extend over the cached prefixes
    step(pos, [decode_from[0] + 1, decode_from[1] + 3], ForwardMode.MIXED)  # one decode-like, one chunk
    while pos[0] < len(seqs[0]) or pos[1] < len(seqs[1]):
        ends = [min(p + 1, len(s)) for p, s in zip(pos, seqs)]
        mode = ForwardMode.DECODE if all(e > p for e, p in zip(ends, pos)) else None
        step(pos, ends, mode)
    for i in range(2):
        torch.testing.assert_close(torch.cat(got[i]), _hf_logits(hf, seqs[i]), atol=ATOL, rtol=0)


def test_decode_steps_read_the_paged_pool_not_fresh_kv(pair: tuple[Any, Any, Any]) -> None:
    """Corrupting a cached slot changes later logits: decode really attends over the pool's stored keys."""
    hf, model, config = pair
    seq = _prompts([9], seed=4)[0]
    paged = make_paged_kv(config)
    _ours(model, build_forward_batch(paged, [0], [0], [seq[:8]]))
    clean = _ours(model, build_forward_batch(paged, [0], [8], [seq[8:9]]))
    torch.testing.assert_close(clean, _hf_logits(hf, seq)[8:9], atol=ATOL, rtol=0)
    slot = int(paged.req_to_token_pool.req_to_token[0, 3])
    paged.kv_pool.k_buffer[0][slot].normal_()
    fb = build_forward_batch(paged, [0], [8], [seq[8:9]])  # the same token again, over the corrupted prefix
    assert not torch.allclose(_ours(model, fb), clean, atol=ATOL)


ROPE_VARIANTS: dict[str, dict[str, Any]] = {
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
    "llama3": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32, "rope_theta": 500000.0,
    },
}


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rope_cos_sin_table_equals_hf_rotary_embedding(variant: str) -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf_config = LlamaConfig(
        hidden_size=64, num_attention_heads=4, max_position_embeddings=96, rope_parameters=dict(ROPE_VARIANTS[variant])
    )
    hf_rope = LlamaRotaryEmbedding(hf_config)
    positions = torch.arange(96)
    cos, sin = hf_rope(torch.zeros(1, dtype=torch.float32), positions[None])
    theta = ROPE_VARIANTS[variant]["rope_theta"]
    ours: Any = get_rope(16, 16, 96, theta, ROPE_VARIANTS[variant], ctx=_ctx())
    assert ours.cos_sin_cache.dtype == torch.float32 and ours.cos_sin_cache.shape == (96, 16)
    # HF repeats each frequency twice (neox layout); our table holds each once.
    torch.testing.assert_close(ours.cos_sin_cache[:, :8], cos[0, :, :8], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.cos_sin_cache[:, 8:], sin[0, :, :8], atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rope_scaled_model_logits_equal_hf(variant: str, tmp_path: Any) -> None:
    path = make_tiny_hf_model(
        "llama", tmp_path, seed=11, num_hidden_layers=1, max_position_embeddings=96,
        rope_parameters=dict(ROPE_VARIANTS[variant]),
    )
    model, config = load_model(path, _ctx())
    assert config.rope_scaling is not None and config.rope_theta == ROPE_VARIANTS[variant]["rope_theta"]
    prompt = _prompts([90], seed=5)[0]
    fb = build_forward_batch(make_paged_kv(config), [0], [0], [prompt])
    torch.testing.assert_close(_ours(model, fb), _hf_logits(load_hf_model(path), prompt), atol=ATOL, rtol=0)


def test_unsupported_rope_type_error_lists_supported() -> None:
    with pytest.raises(ValueError, match=r"'longrope'.*llama3"):
        get_rope(16, 16, 32, 10000.0, {"rope_type": "longrope", "factor": 2.0}, ctx=_ctx())
