"""A DeepSeek (MLA) model on the Triton kernels (attention backend over its latent KV pool, fused MoE) reproduces
Hugging Face's logits: the backend stores and reads the one-head latent cache, whose value buffer is a view of the
key buffer."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
import torch

from sgl.core.memory.kv_pool import MLAKVPool, model_kv_layout
from sgl.core.memory.req_to_token import ReqToTokenPool
from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.platform import Platform
from sgl.kernels.attention_backend import TritonAttnBackend
from sgl.kernels.fused_moe import fused_moe
from tests.core.tiny_models import PagedKV, build_forward_batch, load_hf_model
from tests.models.tiny_moe import make_tiny_moe_model

pytest.importorskip("transformers")


def test_deepseek_on_triton_backend_prefill_and_decode_equal_hf(tmp_path: Any, device: torch.device) -> None:
    path = make_tiny_moe_model("deepseek_v3", tmp_path, seed=4)
    ctx = ModelContext.from_platform(Platform(), torch.float32, device=device)
    ctx = dataclasses.replace(ctx, ops=ctx.ops.replace(fused_moe=fused_moe))  # the Triton MoE in the whole model
    model, config = load_model(path, ctx)
    pool = model_kv_layout(model, config.num_kv_heads, config.head_dim).make_pool(256, 1, config.num_layers,
                                                                                torch.float32, device)
    assert isinstance(pool, MLAKVPool)
    free = list(range(1, 257))
    random.Random(0).shuffle(free)
    paged = PagedKV(pool, ReqToTokenPool(4, 64, device), TritonAttnBackend(None), free)
    rng = random.Random(1)
    seqs = [[rng.randrange(3, 256) for _ in range(n)] for n in (9, 6)]
    hf = load_hf_model(path)
    got: list[list[torch.Tensor]] = [[], []]
    with torch.no_grad():
        fb = build_forward_batch(paged, [0, 1], [0, 0], [seqs[0][:7], seqs[1][:4]])
        logits = model.compute_logits(model(fb.input_ids, fb.positions, fb)).cpu()
        got[0].append(logits[:7])
        got[1].append(logits[7:])
        for step in range(2):
            fb = build_forward_batch(paged, [0, 1], [7 + step, 4 + step], [[seqs[0][7 + step]], [seqs[1][4 + step]]])
            logits = model.compute_logits(model(fb.input_ids, fb.positions, fb)).cpu()
            got[0].append(logits[:1])
            got[1].append(logits[1:])
        for i, n in enumerate((9, 6)):
            expect = hf(torch.tensor([seqs[i][:n]])).logits[0].float()
            torch.testing.assert_close(torch.cat(got[i]), expect, atol=1e-4, rtol=0)

