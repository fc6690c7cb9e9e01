"""A whole tiny model on the Triton platform's pieces (portable ops, skinny GEMMs, Triton attention) gives the same
bits with the fused layer kernels as without them (the prologue, the gated down projection, K splits summed
in-kernel): hidden states and every KV slot, over a prefill and a decode step.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sgl.core.distributed.communicator import SINGLE
from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.runner.forward_batch import ForwardBatch
from sgl.kernels import portable_ops
from sgl.kernels.attention_backend import TritonAttnBackend
from sgl.kernels.linear_method import SkinnyLinearMethod
from sgl.kernels.skinny_gemm import skinny_config
from tests.core.tiny_models import PagedKV, build_forward_batch, make_paged_kv, make_tiny_hf_model


def _run(model_dir: str, fused: bool, device: torch.device) -> tuple[list[torch.Tensor], PagedKV, list[str]]:
    """Two requests: a prefill of 5 and 3 tokens, then a decode step; returns each forward's hidden states and the
    calls of the fused prologue op and of the gated GEMM."""
    ops = portable_ops()
    calls: list[str] = []

    def spy(*args: object) -> torch.Tensor:
        calls.append("prologue")
        return ops.qk_norm_rope_store_kv(*args)

    class Gemm(SkinnyLinearMethod):
        def apply_gated(self, *args: Any) -> torch.Tensor:
            calls.append("gated")
            return super().apply_gated(*args)

    ctx = ModelContext(ops.replace(qk_norm_rope_store_kv=spy), Gemm(), SINGLE, torch.bfloat16, device,
                       layer_fusion=fused)
    model, config = load_model(model_dir, ctx)
    # NOTE: the Triton backend reads the flag (merging KV splits in stage 1) from its runner's ServerArgs
    runner = SimpleNamespace(args=SimpleNamespace(enable_layer_fusion=fused))
    paged = make_paged_kv(config, dtype=torch.bfloat16, backend=TritonAttnBackend(runner), seed=3)
    steps: list[tuple[list[int], list[list[int]]]] = [
        ([0, 0], [[5, 9, 12, 7, 30], [40, 41, 3]]), ([5, 3], [[17], [99]]),
    ]
    hidden = []
    with torch.no_grad():
        for prefix, new in steps:
            fb: ForwardBatch = build_forward_batch(paged, [0, 1], prefix, new)
            hidden.append(model(fb.input_ids.to(device), fb.positions.to(device), fb))
    return hidden, paged, calls


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_fused_layers_give_the_unfused_bits(tmp_path: Path, arch: str, device: torch.device) -> None:
    if device.type != "cpu":
        pytest.skip("the tiny model's batches are built on the CPU")
    # NOTE: intermediate 512 splits the down projection's K in two: its splits are summed in-kernel (tickets)
    model_dir = make_tiny_hf_model(arch, tmp_path / arch, seed=4, hidden_size=64, intermediate_size=512)
    assert skinny_config(64, 512, device).split_k > 1
    fused, fused_kv, calls = _run(model_dir, True, device)
    plain, plain_kv, no_calls = _run(model_dir, False, device)
    # 2 layers x 2 forwards, only where fused
    assert sorted(calls) == ["gated"] * 4 + ["prologue"] * 4 and no_calls == []
    for a, b in zip(fused, plain):
        assert torch.equal(a, b)
    for layer in range(2):
        assert torch.equal(fused_kv.kv_pool.k_buffer[layer], plain_kv.kv_pool.k_buffer[layer])
        assert torch.equal(fused_kv.kv_pool.v_buffer[layer], plain_kv.kv_pool.v_buffer[layer])
    assert fused_kv.kv_pool.k_buffer[1].abs().sum() > 0
    # the decode step merged its KV splits in stage 1 only where fused (the tickets exist only then)
    assert fused_kv.backend._tickets is not None and plain_kv.backend._tickets is None  # type: ignore[attr-defined]


def test_split_tickets_only_with_layer_fusion(tmp_path: Path, device: torch.device) -> None:
    model_dir = make_tiny_hf_model("llama", tmp_path / "llama", seed=4, hidden_size=64, intermediate_size=512)
    for fused in (True, False):
        ctx = ModelContext(portable_ops(), SkinnyLinearMethod(), SINGLE, torch.bfloat16, device, layer_fusion=fused)
        model, _ = load_model(model_dir, ctx)
        down: Any = model.get_submodule("model.layers.0.mlp.down_proj")
        assert hasattr(down, "split_tickets") == fused
        if fused:
            assert not down.split_tickets.any()
