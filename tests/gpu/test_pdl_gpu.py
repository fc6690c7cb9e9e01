"""Programmatic dependent launch on an sm90+ GPU: a decode forward's results bit for bit those of plain launches,
eager and over graph replays (a kernel that read its predecessor's output before it landed would show as a replay
that differs), with and without layer fusion; and the engine's greedy tokens unchanged by ``--cuda-pdl``.

Run on a GPU machine: ``pytest tests/gpu/test_pdl_gpu.py -m gpu -s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.gpu.nvidia_kernels import require_compiled_kernels_on_nvidia

require_compiled_kernels_on_nvidia()
if torch.cuda.get_device_capability()[0] < 9:
    pytest.skip("programmatic dependent launch needs compute capability 9.0+", allow_module_level=True)

from sgl.kernels import pdl

pytestmark = pytest.mark.gpu

DEV = torch.device("cuda")


@pytest.fixture(autouse=True)
def _policy_restored() -> Iterator[None]:
    yield
    pdl.configure(False)


def _replays(forward: object, n: int) -> list[torch.Tensor]:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        forward()  # type: ignore[operator]
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward()  # type: ignore[operator]
    got = []
    for _ in range(n):
        graph.replay()
        torch.cuda.synchronize()
        got.append(out.clone())
    return got


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("model", ["qwen3-0.6b", "llama-3.1-8b"])
def test_decode_forward_bit_equal_with_dependent_launches(model: str, fused: bool) -> None:
    from benchmarks.kernels_per_layer import _decode_setup

    net, fb = _decode_setup(model, 4, fused, DEV)
    with torch.no_grad():
        pdl.configure(False)
        want = net(fb.input_ids, fb.positions, fb).clone()
        pdl.configure(True)
        assert pdl.launch_options(want)["USE_PDL"]
        eager = net(fb.input_ids, fb.positions, fb).clone()
        assert torch.equal(eager, want)
        for i, got in enumerate(_replays(lambda: net(fb.input_ids, fb.positions, fb), 100)):
            assert torch.equal(got, want), f"replay {i} differs"


def test_engine_greedy_tokens_identical_with_and_without_pdl(demo_model_dir: Path) -> None:
    import sgl
    from sgl.plugins.cuda.args import CudaArgs
    from tests.core.engine_utils import GREEDY, PROMPTS

    outs = []
    for on in (False, True):
        with sgl.Engine(model_path=str(demo_model_dir), backend="cuda", dtype="bfloat16", max_total_tokens=16384,
                        context_length=2048, plugin_args={"cuda": CudaArgs(pdl=on)}) as engine:
            outs.append([o["output_ids"] for o in engine.generate(PROMPTS, GREEDY)])
    assert outs[0] == outs[1]
