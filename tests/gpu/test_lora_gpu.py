"""The SGMV LoRA kernels against the torch reference at Llama-3.1-8B shapes in bf16 on a real GPU, the time they add
to a decode step, and an engine serving adapters with the triton backend.

Run on a GPU machine: ``pytest tests/gpu/test_lora_gpu.py -m gpu -s`` (``-s`` shows the timing lines).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.gpu.nvidia_kernels import require_compiled_kernels_on_nvidia

require_compiled_kernels_on_nvidia()

from sgl.core.model.linear import OutputSlice
from sgl.plugins.lora.apply import apply_reference, apply_triton
from sgl.plugins.lora.segments import build_segments

pytestmark = pytest.mark.gpu

DEV = torch.device("cuda")
BF16 = torch.bfloat16
HIDDEN, Q, KV, INTER = 4096, 4096, 1024, 14336


def _weights(slice_sizes: list[int], in_f: int, rank: int, slots: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    a = torch.randn(slots, len(slice_sizes) * rank, in_f, device=DEV, dtype=BF16) * 0.02
    bs = [torch.randn(slots, n, rank, device=DEV, dtype=BF16) * 0.02 for n in slice_sizes]
    return a, bs


def _slices(sizes: list[int]) -> list[OutputSlice]:
    return [OutputSlice(i, sum(sizes[:i]), n) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("rank", [16, 64])
@pytest.mark.parametrize(("name", "in_f", "sizes"), [("qkv", HIDDEN, [Q, KV, KV]), ("gate_up", HIDDEN, [INTER, INTER]),
                                                     ("down", INTER, [HIDDEN])])
@pytest.mark.parametrize("counts", [[1] * 32, [512, 300, 1, 1, 77]], ids=["decode32", "prefill"])
def test_sgmv_matches_reference_at_llama8b_shapes(rank: int, name: str, in_f: int, sizes: list[int],
                                                  counts: list[int]) -> None:
    torch.manual_seed(0)
    slots = [i % 9 - 1 for i in range(len(counts))]  # 8 adapters and base rows
    a, bs = _weights(sizes, in_f, rank, 8)
    x = torch.randn(sum(counts), in_f, device=DEV, dtype=BF16)
    out = torch.randn(sum(counts), sum(sizes), device=DEV, dtype=BF16)
    seg = build_segments(counts, slots, DEV)
    ref = out.float().clone()
    apply_reference(x.float(), ref, a.float(), [b.float() for b in bs], _slices(sizes), rank, seg)
    got = out.clone()
    apply_triton(x, got, a, bs, _slices(sizes), rank, seg)
    torch.testing.assert_close(got.float(), ref, atol=3e-2, rtol=2e-2)


def test_sgmv_decode_overhead_line() -> None:
    """Prints the time the LoRA kernels add to one decode step of 32 requests over 8 adapters (all 7 projections of
    one layer, rank 16), beside the layer's base GEMMs."""
    torch.manual_seed(0)
    shapes = [(HIDDEN, [Q, KV, KV]), (Q, [HIDDEN]), (HIDDEN, [INTER, INTER]), (INTER, [HIDDEN])]
    layers = [(torch.randn(32, i, device=DEV, dtype=BF16), torch.randn(sum(s), i, device=DEV, dtype=BF16),
               *_weights(s, i, 16, 8), _slices(s)) for i, s in shapes]
    seg = build_segments([1] * 32, [i % 8 for i in range(32)], DEV)

    def run(lora: bool) -> None:
        for x, w, a, bs, sl in layers:
            out = x @ w.t()
            if lora:
                apply_triton(x, out, a, bs, sl, 16, seg)

    for lora in (False, True):
        run(lora)
    times = {}
    for lora in (False, True):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            run(lora)
        end.record()
        torch.cuda.synchronize()
        times[lora] = start.elapsed_time(end) / 50
    print(f"\nLoRA decode layer (bs 32, 8 adapters, rank 16): base {times[False]:.3f} ms, "
          f"with LoRA {times[True]:.3f} ms (+{times[True] - times[False]:.3f} ms per layer)")


def test_engine_serves_adapters_with_the_triton_backend(demo_model_dir: Path, tmp_path: Path) -> None:
    """The triton backend on the GPU gives the same greedy tokens as the torch backend on the same adapter."""
    import sgl
    from tests.lora.peft_adapters import make_peft_adapter

    path = make_peft_adapter(demo_model_dir, tmp_path / "a", rank=8, seed=1)
    params = {"temperature": 0.0, "max_new_tokens": 16, "ignore_eos": True}
    prompts = ["The quick brown fox", "def fibonacci(n):", "Once upon a time"]
    loras = ["a", None, "a"]
    outs = {}
    for backend in ("triton", "torch"):
        with sgl.Engine(model_path=str(demo_model_dir), backend="cuda", dtype="float32", lora_paths=[f"a={path}"],
                        lora_backend=backend, max_total_tokens=4096) as engine:
            outs[backend] = [o["output_ids"] for o in engine.generate(prompts, params, lora_path=loras)]
    assert outs["triton"] == outs["torch"]


def test_decode_graphs_stay_on_with_lora_and_give_the_eager_tokens(demo_model_dir: Path, tmp_path: Path) -> None:
    """The triton backend recaptures the decode graphs with the adapter updates: graphs on == graphs off."""
    import sgl
    from tests.lora.peft_adapters import make_peft_adapter

    paths = {n: make_peft_adapter(demo_model_dir, tmp_path / n, rank=r, seed=s) for n, r, s in (("a", 8, 1), ("b", 4, 2))}
    params = {"temperature": 0.0, "max_new_tokens": 16, "ignore_eos": True}
    prompts = ["The quick brown fox", "def fibonacci(n):", "Once upon a time", "1, 2, 3,", "Hello"]
    loras = ["a", None, "b", "a", None]
    outs = {}
    for graphs in (True, False):
        with sgl.Engine(model_path=str(demo_model_dir), backend="cuda", dtype="float32",
                        lora_paths=[f"{n}={p}" for n, p in paths.items()], lora_backend="triton",
                        max_total_tokens=4096, disable_cuda_graph=not graphs) as engine:
            assert (engine.runtime.scheduler.runner.graph_runner is not None) == graphs
            outs[graphs] = [o["output_ids"] for o in engine.generate(prompts, params, lora_path=loras)]
    assert outs[True] == outs[False]
