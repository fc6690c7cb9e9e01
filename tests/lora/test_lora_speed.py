"""The multi-LoRA benchmark (benchmarks/lora_speed.py) on the demo model: it returns every figure, its adapters
change the output, and the adapters it writes without peft are ones peft itself reads and runs to the same tokens."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks.lora_adapters import write_adapter
from benchmarks.lora_speed import BaseFigures, LoRAFigures, measure, parse_args, table
from tests.core.engine_utils import make_engine
from tests.lora.peft_adapters import load_peft_model, oracle_greedy

SMALL = {"adapters": 2, "requests": 4, "input_len": 16, "output_len": 6, "decode_tokens": 6, "loads": 2}


def _figures(backend: str) -> tuple[BaseFigures, LoRAFigures]:
    base, lora = measure("demo", ranks=(4,), backend=backend, max_total_tokens=4096, context_length=1024, **SMALL)
    assert isinstance(base, BaseFigures) and isinstance(lora, LoRAFigures)
    return base, lora


def test_demo_run_reports_every_figure_and_the_adapters_change_the_tokens() -> None:
    base, lora = _figures("cpu")
    assert base.model == lora.model == "demo"
    assert base.throughput_tok_s > 0 and base.decode_tok_s > 0
    assert (lora.rank, lora.adapters) == (4, 2)
    assert lora.lora_kernel == "apply_reference"  # the CPU platform has no Triton
    assert lora.throughput_tok_s > 0 and lora.decode_tok_s > 0 and lora.base_rows_decode_tok_s > 0
    assert lora.throughput_ratio == pytest.approx(lora.throughput_tok_s / base.throughput_tok_s, rel=0.01)
    assert len(lora.load_s_all) == 2 and all(s > 0 for s in lora.load_s_all)
    assert min(lora.load_s_all) <= lora.load_s <= max(lora.load_s_all)
    assert lora.first_request_s > 0 and lora.resident_request_s > 0
    assert lora.outputs_differ > 0, "the adapters left every request's tokens as the base model's"
    assert not base.graphs and not lora.graphs and lora.graph_replays == 0
    assert base.device.b1 is base.device.batch is lora.device.b1 is lora.device.batch is None  # CUDA only
    shown = table(base, [lora])
    assert "lora r4" in shown and f"{lora.throughput_ratio:.3f}" in shown
    assert json.loads(json.dumps(asdict(lora)))["device"] == {"b1": None, "batch": None}


def test_written_adapter_is_read_by_peft_and_gives_its_greedy_tokens(demo_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    path = write_adapter(demo_model_dir, tmp_path / "bench", rank=8, seed=3)
    prompt = [5, 77, 301, 1200, 42, 9, 640]
    with make_engine(demo_model_dir, lora_paths=[f"bench={path}"]) as engine:
        params = {"temperature": 0.0, "max_new_tokens": 8, "ignore_eos": True}
        got = engine.generate(input_ids=prompt, sampling_params=params, lora_path="bench")["output_ids"]
        base = engine.generate(input_ids=prompt, sampling_params=params)["output_ids"]
    want, _ = oracle_greedy(load_peft_model(demo_model_dir, path), prompt, 8)
    assert got == want
    assert got != base


def test_cli_flags() -> None:
    args = parse_args(["llama-3.1-8b", "--ranks", "16,64", "--adapters", "8", "--input-len", "512"])
    assert (args.model, args.ranks, args.adapters, args.requests, args.input_len, args.output_len) == (
        "llama-3.1-8b", [16, 64], 8, 32, 512, 128)
    for bad in (["demo", "--ranks", "16,0"], ["demo", "--requests", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


@pytest.mark.gpu
def test_on_cuda_the_triton_kernels_run_inside_the_decode_graphs() -> None:
    base, lora = _figures("cuda")
    assert base.graphs and base.graph_replays > 0
    assert lora.lora_kernel == "apply_triton"
    assert lora.graphs and lora.graph_replays > 0
    for profile in (lora.device.b1, lora.device.batch):
        assert profile is not None and 0 < profile.sgmv_share < 1 and profile.us_per_step > 0
    assert base.device.b1 is not None and base.device.b1.sgmv_share == 0
    assert lora.outputs_differ > 0
