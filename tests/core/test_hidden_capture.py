"""The model contract's hidden-state capture (what EAGLE-3 reads from a target): the residual stream entering each
asked-for layer equals Hugging Face's ``output_hidden_states`` on the same weights, for every dense architecture,
and asking for it leaves the forward's result unchanged."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.platform import Platform
from tests.core.tiny_models import ARCHS, build_forward_batch, load_hf_model, make_paged_kv, make_tiny_hf_model


@pytest.mark.parametrize("arch", ARCHS)
def test_captured_layers_equal_hf_hidden_states(arch: str, tmp_path: Any) -> None:
    path = make_tiny_hf_model(arch, tmp_path / arch, seed=11)
    model, config = load_model(path, ModelContext.from_platform(Platform(), torch.float32))
    hf = load_hf_model(path)
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 256) for _ in range(n)] for n in (7, 12)]
    n = config.num_layers
    fb = build_forward_batch(make_paged_kv(config), [1, 0], [0, 0], prompts)
    plain = build_forward_batch(make_paged_kv(config), [1, 0], [0, 0], prompts)
    fb.capture_hidden_layers = (n, 0, 1)
    with torch.no_grad():
        out = model(fb.input_ids, fb.positions, fb)
        assert torch.equal(out, model(plain.input_ids, plain.positions, plain)) and not plain.captured_hidden
        per_prompt = [hf(torch.tensor([p]), output_hidden_states=True).hidden_states for p in prompts]
        want = [torch.cat([x[0] for x in layer]) for layer in zip(*per_prompt)]
    assert sorted(fb.captured_hidden) == [0, 1, n]
    for layer in (0, 1):
        torch.testing.assert_close(fb.captured_hidden[layer], want[layer], atol=1e-4, rtol=0)
    # HF's last entry is after the final norm; ours is the stream before it, whose norm is the forward's result
    torch.testing.assert_close(model.model.norm(fb.captured_hidden[n]), out, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, want[n], atol=1e-4, rtol=0)
