"""The shipped MoE configs build the real architectures: parameter counts equal the published checkpoints' (built on
the meta device, so no memory is used), and DeepSeek's KV layout is the 576-wide latent."""

from __future__ import annotations

import pytest
import torch

from sgl.core.memory.kv_pool import KVLayout
from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.loader import resolve_architecture
from sgl.core.model.shipped import materialize
from sgl.core.platform import Platform

# The Hub's safetensors parameter totals of Qwen/Qwen3-30B-A3B and deepseek-ai/DeepSeek-V2-Lite.
PUBLISHED_PARAMS = {"qwen3-30b-a3b": 30_532_122_624, "deepseek-v2-lite": 15_706_484_224}


def _build_on_meta(name: str) -> torch.nn.Module:
    config = ModelConfig.from_dir(materialize(name))
    ctx = ModelContext.from_platform(Platform(), torch.bfloat16, device=torch.device("meta"))
    with torch.device("meta"):
        return resolve_architecture(config)(config, ctx)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_shipped_moe_config_has_the_published_parameter_count(name: str) -> None:
    assert sum(p.numel() for p in _build_on_meta(name).parameters()) == PUBLISHED_PARAMS[name]


def test_deepseek_v2_lite_caches_one_576_wide_latent_per_token() -> None:
    layout = _build_on_meta("deepseek-v2-lite").kv_layout()  # type: ignore[operator]
    assert layout == KVLayout(1, 512 + 64, 512, latent=True)
    assert layout.bytes_per_token(27, torch.bfloat16) == 27 * 576 * 2  # full heads: 27 * 16 * (192 + 128) * 2
