"""LoRA under decode graphs, as far as a CPU can show it: a graph replays the kernels it recorded over the graph
segments that before_forward rewrites each step. Here an emulated graph runner runs the forward in capture mode at
each "replay" (so every adapter hook reads the graph segments, as the recorded kernels would), with the Triton
kernels under the interpreter; a mixed batch of adapters and the base model must give the eager path's tokens.

NOTE: this is a stand-in for a CUDA graph: it checks what the replayed kernels read and compute, not that they
capture (tests/gpu/test_lora_gpu.py does that on a GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sgl.plugins.lora.apply import apply_triton
from sgl.plugins.lora.segments import GraphSegments
from tests.core.engine_utils import make_engine

GREEDY: dict[str, Any] = {"temperature": 0.0, "max_new_tokens": 4, "ignore_eos": True}
PROMPTS = ["The quick brown fox", "Once upon a time,", "def fibonacci(n):", "A B C", "Hello there"]
LORAS = ["r4", None, "mlp8", "r4", None]
MAX_GRAPH_BS = 8


class EmulatedGraphs:
    """Replays a decode batch by running the model with the LoRA hooks in capture mode."""

    def __init__(self, runner: Any, backend: Any) -> None:
        self.runner, self.backend, self.max_bs, self.replays = runner, backend, MAX_GRAPH_BS, 0

    def can_run(self, fb: Any) -> bool:
        return fb.forward_mode.is_decode and fb.batch_size <= self.max_bs

    def replay(self, fb: Any) -> torch.Tensor:
        self.replays += 1
        self.backend.capturing = True
        try:
            self.runner.attn_backend.init_forward_metadata(fb)
            return self.runner.model(fb.input_ids, fb.positions, fb)
        finally:
            self.backend.capturing = False


def test_decode_graph_segments_give_the_eager_tokens(demo_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from tests.lora.peft_adapters import make_peft_adapter

    adapters = {
        "r4": make_peft_adapter(demo_model_dir, tmp_path / "r4", rank=4, seed=1),
        "mlp8": make_peft_adapter(demo_model_dir, tmp_path / "mlp8", rank=8, seed=3,
                                  target_modules=("gate_proj", "up_proj", "down_proj")),
    }
    with make_engine(demo_model_dir, lora_paths=[f"{n}={p}" for n, p in adapters.items()], max_loras_per_batch=2,
                     max_lora_rank=8, lora_backend="triton") as engine:
        scheduler = engine.runtime.scheduler
        backend = next(f for f in scheduler.features if f.name == "lora")
        backend.apply_fn = apply_triton  # NOTE: the CPU platform has no Triton; the interpreter runs the kernels
        eager = [o["output_ids"] for o in engine.generate(PROMPTS, GREEDY, lora_path=LORAS)]
        runner = scheduler.runner
        backend.graph_segments = GraphSegments(backend.pool.num_slots, MAX_GRAPH_BS, runner.device)
        graphs = runner.graph_runner = EmulatedGraphs(runner, backend)
        replayed = [o["output_ids"] for o in engine.generate(PROMPTS, GREEDY, lora_path=LORAS)]
        base_only = engine.generate(PROMPTS[1], GREEDY)["output_ids"]
    assert graphs.replays >= GREEDY["max_new_tokens"] - 1
    assert replayed == eager
    assert replayed[1] == base_only and replayed[0] != base_only  # adapters applied, base rows untouched
