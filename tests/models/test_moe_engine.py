"""Greedy generation through the whole engine (scheduler, radix cache, the KV pool the model's layout asks for)
equals transformers' on the same tiny MoE / MLA weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgl.core.memory.kv_pool import MLAKVPool
from tests.core.engine_utils import make_engine
from tests.core.test_engine_vs_hf import NEW, hf_greedy
from tests.models.tiny_moe import MOE_ARCHS, make_tiny_moe_model

pytest.importorskip("transformers")


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_moe_architectures_greedy_match_transformers(tmp_path: Path, demo_model_dir: Path, arch: str) -> None:
    model_dir = make_tiny_moe_model(arch, tmp_path / arch, seed=1)
    g = torch.Generator().manual_seed(3)
    prompt_ids = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 17, 33)]
    with make_engine(model_dir, tokenizer_path=str(demo_model_dir)) as engine:
        got = engine.generate(input_ids=prompt_ids, sampling_params={"temperature": 0, "max_new_tokens": NEW,
                                                                     "ignore_eos": True})
    assert [o["output_ids"] for o in got] == hf_greedy(model_dir, prompt_ids)


def test_mla_models_cache_one_latent_per_token(tmp_path: Path, demo_model_dir: Path) -> None:
    """DeepSeek's pool holds kv_lora_rank + rope features per token and layer, once (the value is a view of it)."""
    model_dir = make_tiny_moe_model("deepseek_v3", tmp_path / "m", seed=2)
    with make_engine(model_dir, tokenizer_path=str(demo_model_dir)) as engine:
        runner = engine.runtime.scheduler.runner
        pool = runner.kv_pool
        assert isinstance(pool, MLAKVPool)
        assert pool.k_buffer[0].shape[1:] == (1, 32 + 8)
        assert pool.v_buffer[0].data_ptr() == pool.k_buffer[0].data_ptr() and pool.v_buffer[0].shape[-1] == 32
        assert runner.plan.bytes_per_token == 3 * 40 * 4  # layers x latent width x fp32, no separate V
