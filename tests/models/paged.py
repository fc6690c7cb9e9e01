"""Test helper (not a test): a paged KV pool shaped the way a model's KV layout says (MLA's latent cache included)."""

from __future__ import annotations

import random
from typing import Any

from sgl.core.attention.torch_native import TorchNativeAttnBackend
from sgl.core.memory.kv_pool import model_kv_layout
from sgl.core.memory.req_to_token import ReqToTokenPool
from sgl.core.model.config import ModelConfig
from tests.core.tiny_models import PagedKV


def make_model_paged_kv(model: Any, config: ModelConfig, num_slots: int = 1024, seed: int = 0) -> PagedKV:
    """KV heads are this rank's (those of the model's first attention layer) under tensor parallelism."""
    kv_heads = getattr(model.model.layers[0].self_attn, "num_kv_heads", config.num_kv_heads)
    layout = model_kv_layout(model, kv_heads, config.head_dim)
    pool = layout.make_pool(num_slots, 1, config.num_layers, model_dtype(model))
    free = list(range(1, num_slots + 1))  # NOTE: slot 0 is the padding sink, never handed out
    random.Random(seed).shuffle(free)
    return PagedKV(pool, ReqToTokenPool(8, 256), TorchNativeAttnBackend(None), free)


def model_dtype(model: Any) -> Any:
    return next(model.parameters()).dtype
