"""AWQ (GEMM layout) and GPTQ (v1 and v2 zeros, with and without desc_act) checkpoints, packed here as the formats
define them, compute exactly what their dequantized weights compute."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from sgl.core.demo_model import write_demo_model
from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.platform import Platform
from sgl.core.plugins import get_plugins
from sgl.core.quant.base import select_quantization
from tests.core.engine_utils import PROMPTS, greedy_ids, make_engine
from tests.core.tiny_models import build_forward_batch, make_paged_kv
from tests.quant.checkpoints import Quantizer, write_pair

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ's pack order: nibble i holds column AWQ_ORDER[i] of each eight


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    words = words & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_awq_cols(ints: torch.Tensor) -> torch.Tensor:
    """[rows, cols] ints 0..15 -> [rows, cols/8] int32, AutoAWQ's GEMM order."""
    rows, cols = ints.shape
    words = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for c in range(cols // 8):
        for i in range(8):
            words[:, c] |= ints[:, c * 8 + AWQ_ORDER[i]].long() << (4 * i)
    return _to_int32(words)


def pack_seq_cols(ints: torch.Tensor) -> torch.Tensor:
    rows, cols = ints.shape
    words = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for j in range(8):
        words |= ints[:, j::8].long() << (4 * j)
    return _to_int32(words)


def pack_seq_rows(ints: torch.Tensor) -> torch.Tensor:
    """GPTQ's qweight: [in, out] -> [in/8, out], input row 8r + j in nibble j of word r."""
    return pack_seq_cols(ints.t().contiguous()).t().contiguous()


def _asym(w_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One group [g, out] of the transposed weight -> ints, fp16 scales [out], zeros [out] (min/max, 4 bits)."""
    lo, hi = w_t.min(0).values.clamp(max=0), w_t.max(0).values.clamp(min=0)
    scale = ((hi - lo) / 15).clamp(min=1e-6).half()
    zero = torch.round(-lo / scale.float()).clamp(0, 15)
    q = torch.clamp(torch.round(w_t / scale.float()) + zero, 0, 15)
    return q, scale, zero


def _sym(w_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scale = (w_t.abs().max(0).values / 7).clamp(min=1e-6).half()
    q = torch.clamp(torch.round(w_t / scale.float()) + 8, 0, 15)
    return q, scale, torch.full_like(scale, 8, dtype=torch.float32)


def awq_quantizer(group: int) -> Quantizer:
    def quantize(name: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        w_t = w.t()  # [in, out]
        n_in = w_t.shape[0]
        parts = [_asym(w_t[i:i + group]) for i in range(0, n_in, group)]
        q = torch.cat([p[0] for p in parts])
        scales = torch.stack([p[1] for p in parts])
        zeros = torch.stack([p[2] for p in parts])
        deq = (q - zeros.repeat_interleave(group, 0)) * scales.float().repeat_interleave(group, 0)
        base = name.removesuffix(".weight")
        return {base + ".qweight": pack_awq_cols(q.long()), base + ".qzeros": pack_awq_cols(zeros.long()),
                base + ".scales": scales}, deq.t()

    return quantize


def gptq_quantizer(group: int, desc_act: bool, v2: bool = False, sym: bool = True) -> Quantizer:
    def quantize(name: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        w_t = w.t()
        n_in = w_t.shape[0]
        # NOTE: act order sorts inputs by their activation statistics, so projections of one input (q|k|v,
        # gate|up) share a permutation; the seed follows the input.
        shared = (name.replace("k_proj", "q_proj").replace("v_proj", "q_proj").replace("up_proj", "gate_proj")
                  .replace(".w3.", ".w1."))  # Mixtral's expert up and gate
        gen = torch.Generator().manual_seed(sum(shared.encode()))
        order = torch.randperm(n_in, generator=gen) if desc_act else torch.arange(n_in)
        g_idx = torch.empty(n_in, dtype=torch.int32)
        g_idx[order] = (torch.arange(n_in) // group).to(torch.int32)
        q = torch.empty_like(w_t)
        scales, zeros = [], []
        for g in range(n_in // group):
            rows = (g_idx == g).nonzero().flatten()
            qg, sg, zg = (_sym if sym else _asym)(w_t[rows])
            q[rows] = qg
            scales.append(sg)
            zeros.append(zg)
        s, z = torch.stack(scales), torch.stack(zeros)
        deq = (q - z[g_idx.long()]) * s.float()[g_idx.long()]
        stored = z if v2 else z - 1  # NOTE: v1 stores zero - 1
        base = name.removesuffix(".weight")
        return {base + ".qweight": pack_seq_rows(q.long()), base + ".qzeros": pack_seq_cols(stored.long()),
                base + ".scales": s, base + ".g_idx": g_idx}, deq.t()

    return quantize


def awq_config(group: int) -> dict[str, Any]:
    return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}


def gptq_config(group: int, desc_act: bool, v2: bool = False, sym: bool = True) -> dict[str, Any]:
    return {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": desc_act, "sym": sym,
            "checkpoint_format": "gptq_v2" if v2 else "gptq"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo layout (kv slices of 64 rows, an MLP of 352 = 11 x 32), two layers."""
    return write_demo_model(tmp_path_factory.mktemp("int4") / "demo", seed=5, num_layers=2)


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs in whole groups of 128, as real AWQ/GPTQ releases use."""
    return write_demo_model(
        tmp_path_factory.mktemp("int4") / "wide", seed=6, num_layers=2, hidden_size=256, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, intermediate_size=512, vocab_size=512,
    )


def _logits(path: Path) -> torch.Tensor:
    plugins = get_plugins()
    config = json.loads((path / "config.json").read_text())
    method = select_quantization(None, config.get("quantization_config"), plugins.quantization_methods)
    ctx = ModelContext.from_platform(Platform(), torch.float32, quant_config=method)
    model, cfg = load_model(str(path), ctx, models=plugins.models)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, cfg.vocab_size) for _ in range(n)] for n in (9, 23)]
    fb = build_forward_batch(make_paged_kv(cfg), [0, 1], [0, 0], prompts)
    with torch.no_grad():
        return model.compute_logits(model(fb.input_ids, fb.positions, fb))


CASES = {
    "awq-g128": ("wide", awq_quantizer(128), awq_config(128)),
    "awq-g32": ("demo", awq_quantizer(32), awq_config(32)),
    "gptq-g128": ("wide", gptq_quantizer(128, False), gptq_config(128, False)),
    "gptq-g128-desc-act": ("wide", gptq_quantizer(128, True), gptq_config(128, True)),
    "gptq-g32-desc-act-asym-v2": ("demo", gptq_quantizer(32, True, True, False), gptq_config(32, True, True, False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_int4_checkpoint_logits_equal_its_dequantized_weights(
    tmp_path: Path, request: pytest.FixtureRequest, case: str
) -> None:
    src, quantize, config = CASES[case]
    q, d = write_pair(request.getfixturevalue(src), tmp_path / "q", tmp_path / "d", quantize, config)
    quant, ref = _logits(q), _logits(d)
    torch.testing.assert_close(quant, ref, atol=2e-4, rtol=1e-4)


def test_awq_engine_greedy_tokens_equal_the_dequantized_model(tmp_path: Path, wide: Path) -> None:
    q, d = write_pair(wide, tmp_path / "q", tmp_path / "d", awq_quantizer(128), awq_config(128))
    for path in (q, d):  # NOTE: the demo tokenizer comes along with the copied files
        assert (path / "tokenizer.json").exists()
    engine = make_engine(q)
    try:
        got = greedy_ids(engine, PROMPTS[:3])
    finally:
        engine.shutdown()
    engine = make_engine(d)
    try:
        want = greedy_ids(engine, PROMPTS[:3])
    finally:
        engine.shutdown()
    assert got == want


def test_gptq_v1_zeros_are_read_with_their_offset(tmp_path: Path, demo: Path) -> None:
    """Reading a v1 checkpoint as v2 (no +1 on the zeros) shifts every weight by one step: a different model."""
    q, d = write_pair(demo, tmp_path / "q", tmp_path / "d", gptq_quantizer(32, False), gptq_config(32, False))
    config = json.loads((q / "config.json").read_text())
    config["quantization_config"]["checkpoint_format"] = "gptq_v2"
    (q / "config.json").write_text(json.dumps(config))
    assert not torch.allclose(_logits(q), _logits(d), atol=1e-2)


def test_merged_projections_with_different_act_orders_are_refused(tmp_path: Path, wide: Path) -> None:
    q, _ = write_pair(wide, tmp_path / "q", tmp_path / "d", gptq_quantizer(128, True), gptq_config(128, True))
    tensors = load_file(str(q / "model.safetensors"))
    name = "model.layers.1.self_attn.v_proj.g_idx"
    tensors[name] = tensors[name].flip(0).contiguous()
    save_file(tensors, str(q / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"tensor '{name}': g_idx differs between the merged projections"):
        _logits(q)


def test_a_missing_qzeros_is_a_load_error_naming_the_tensor(tmp_path: Path, demo: Path) -> None:
    q, _ = write_pair(demo, tmp_path / "q", tmp_path / "d", awq_quantizer(32), awq_config(32))
    tensors = load_file(str(q / "model.safetensors"))
    del tensors["model.layers.0.mlp.up_proj.qzeros"]
    save_file(tensors, str(q / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.qzeros"):
        _logits(q)


@pytest.mark.parametrize(("config", "message"), [
    (dict(awq_config(128), version="gemv"), "awq: only the GEMM layout is supported"),
    (dict(awq_config(128), bits=8), "awq: only 4-bit weights are supported; this checkpoint has 8-bit"),
    (dict(gptq_config(128, False), checkpoint_format="marlin"), "gptq: checkpoint_format 'marlin' is not supported"),
    (dict(awq_config(128), modules_to_not_convert=["model.layers.0.mlp.down_proj"]),
     r"awq: checkpoints that leave linear layers unquantized are not supported yet \(model\.layers\.0\.mlp"),
])
def test_unsupported_int4_configs_are_refused_naming_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_quantization(None, config, get_plugins().quantization_methods)


def test_int4_with_dummy_weights_runs(tmp_path: Path, wide: Path) -> None:
    q, _ = write_pair(wide, tmp_path / "q", tmp_path / "d", gptq_quantizer(128, True), gptq_config(128, True))
    plugins = get_plugins()
    config = json.loads((q / "config.json").read_text())
    method = select_quantization(None, config["quantization_config"], plugins.quantization_methods)
    model, cfg = load_model(str(q), ModelContext.from_platform(Platform(), torch.float32, quant_config=method),
                            load_format="dummy", models=plugins.models)
    fb = build_forward_batch(make_paged_kv(cfg), [0], [0], [[5, 6, 7]])
    with torch.no_grad():
        logits = model.compute_logits(model(fb.input_ids, fb.positions, fb))
    assert torch.isfinite(logits).all() and logits.std() > 0
