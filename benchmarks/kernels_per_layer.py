"""Kernels per decoder layer of a batch-1 decode step on the Triton platform's pieces, fused and unfused.

python -m benchmarks.kernels_per_layer [MODEL ...] [--sms 132] [--profile]   (shipped config names; default
qwen3-0.6b llama-3.1-8b)

Without a GPU it runs under TRITON_INTERPRET=1 (set here) with what the CUDA platform builds (``portable_ops``,
``SkinnyLinearMethod``, ``TritonAttnBackend``), two layers of the real config with dummy weights, and lists what one
layer launches: every Triton kernel, and every torch op that would be a device kernel (views and allocations are
not). Launch decisions that depend on the device (K splits of the skinny GEMM, KV splits of decode attention) are
taken for ``--sms`` streaming multiprocessors (132: the H200). On a GPU the same listing runs compiled, and
``--profile`` adds the CUDA profiler's count of device kernels per layer: (kernels of an 8-layer forward - kernels of
a 4-layer forward) / 4, eager, so what a decode graph replays; beside it each kernel's device time per layer (the
same difference), and the time per layer of the forward replayed as a CUDA graph (gaps between kernels included):
where fusion saves launches but a fused kernel runs longer, this says which one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch

if __name__ == "__main__" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # NOTE: read when kernels are decorated, so before sgl.kernels
from torch.utils._python_dispatch import TorchDispatchMode

PROMPT_LEN = 16
_NO_KERNEL = ("detach", "lift_fresh", "alias", "_unsafe_view")  # aliasing ops that is_view does not flag


class _Launches(TorchDispatchMode):
    """Records torch ops that launch a device kernel, while ``active``; Triton launches are recorded beside them."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.in_triton = 0
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        # NOTE: a kernel writes a tensor; views, allocations and ops returning no tensor (promote_types) launch none
        writes = isinstance(out, torch.Tensor) or (isinstance(out, (tuple, list)) and any(
            isinstance(o, torch.Tensor) for o in out))
        kernel = writes and not func.is_view and not name.startswith("empty") and name not in _NO_KERNEL
        if self.active and not self.in_triton and kernel:
            self.names.append(f"torch:{name}")
        return out


@contextmanager
def _count_triton(mode: _Launches) -> Iterator[None]:
    from triton.runtime.jit import KernelInterface

    original = KernelInterface.__getitem__

    def launch(self: Any, grid: Any) -> Any:
        run = original(self, grid)

        def counted(*args: Any, **kwargs: Any) -> Any:
            fn = getattr(self, "fn", None)
            if mode.active and not mode.in_triton:
                mode.names.append(f"triton:{getattr(fn, '__name__', type(self).__name__)}")
            mode.in_triton += 1
            try:
                return run(*args, **kwargs)
            finally:
                mode.in_triton -= 1

        return counted

    KernelInterface.__getitem__ = launch  # type: ignore[method-assign]
    try:
        yield
    finally:
        KernelInterface.__getitem__ = original  # type: ignore[method-assign]


def _model_dir(name: str, layers: int) -> str:
    config = json.loads(resources.files("sgl.core.model").joinpath(f"configs/{name}.json").read_text())
    config["num_hidden_layers"] = layers
    out = Path(tempfile.mkdtemp(prefix=f"kpl-{name}-"))
    (out / "config.json").write_text(json.dumps(config))
    return str(out)


def _decode_setup(name: str, layers: int, fused: bool, device: torch.device) -> tuple[Any, Any]:
    """The model (dummy weights, bf16) and a batch-1 decode ForwardBatch after a random cached prompt."""
    from sgl.core.distributed.communicator import SINGLE
    from sgl.core.memory.kv_pool import KVPool
    from sgl.core.memory.req_to_token import ReqToTokenPool
    from sgl.core.model.context import ModelContext
    from sgl.core.model.loader import load_model
    from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode
    from sgl.kernels import portable_ops
    from sgl.kernels.attention_backend import TritonAttnBackend
    from sgl.kernels.linear_method import SkinnyLinearMethod

    ctx = ModelContext(portable_ops(), SkinnyLinearMethod(), SINGLE, torch.bfloat16, device, layer_fusion=fused)
    model, config = load_model(_model_dir(name, layers), ctx, load_format="dummy")
    pool = KVPool(64, 1, layers, config.num_kv_heads, config.head_dim, torch.bfloat16, device)
    req_to_token = ReqToTokenPool(1, 64, device)
    req_to_token.write(0, 0, torch.arange(1, PROMPT_LEN + 2))
    # NOTE: the backend reads the flag from its runner's ServerArgs: a stand-in runner carries just that field
    backend = TritonAttnBackend(SimpleNamespace(args=SimpleNamespace(enable_layer_fusion=fused)))
    fb = ForwardBatch(
        forward_mode=ForwardMode.DECODE, batch_size=1,
        input_ids=torch.tensor([7], device=device), positions=torch.tensor([PROMPT_LEN], device=device),
        req_pool_indices=torch.zeros(1, dtype=torch.int64, device=device),
        seq_lens=torch.tensor([PROMPT_LEN + 1], device=device),
        out_cache_loc=torch.tensor([PROMPT_LEN + 1], device=device), seq_lens_cpu=[PROMPT_LEN + 1],
        req_to_token_pool=req_to_token, kv_pool=pool, attn_backend=backend,
    )
    backend.init_forward_metadata(fb)
    return model, fb


def layer_launches(name: str, fused: bool, device: torch.device) -> list[str]:
    """What decoder layer 1 of a 2-layer model launches in one batch-1 decode step (layer 0 has no residual yet)."""
    model, fb = _decode_setup(name, 2, fused, device)
    mode = _Launches()
    layer = model.model.layers[1]
    on = layer.register_forward_pre_hook(lambda *_: setattr(mode, "active", True))
    off = layer.register_forward_hook(lambda *_: setattr(mode, "active", False))
    try:
        with torch.no_grad(), _count_triton(mode), mode:
            model(fb.input_ids, fb.positions, fb)
    finally:
        on.remove()
        off.remove()
    return mode.names


class LayerProfile(NamedTuple):
    kernels: float  # device kernels per layer
    kernel_us: dict[str, float]  # device time per layer by kernel name
    graph_us: float | None  # a layer's share of a graph-replayed forward; None where capture failed


def profile_layers(name: str, fused: bool, device: torch.device, replays: int = 200, forwards: int = 5) -> LayerProfile:
    """CUDA profiler (mean of ``forwards`` eager forwards) and graph replays, each as (8-layer forward - 4-layer
    forward) / 4: one layer's share. Eight layers of weights do not fit in L2, so the replays read HBM as a full model
    does."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    counts: list[int] = []
    times: list[Counter[str]] = []
    graph: list[float | None] = []
    few, many = 4, 8
    for layers in (few, many):
        model, fb = _decode_setup(name, layers, fused, device)
        with torch.no_grad():
            model(fb.input_ids, fb.positions, fb)  # compile and warm up outside the profile
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(forwards):
                    model(fb.input_ids, fb.positions, fb)
                torch.cuda.synchronize()
            kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
            counts.append(len(kernels) // forwards)
            per_name: Counter[str] = Counter()
            for e in kernels:
                per_name[e.name] += e.time_range.elapsed_us() / forwards
            times.append(per_name)
            graph.append(_graph_us(partial(model, fb.input_ids, fb.positions, fb), replays))
    span = many - few
    kernel_us = {k: (times[1][k] - times[0][k]) / span for k in times[1]}
    graph_us = (graph[1] - graph[0]) / span if graph[0] is not None and graph[1] is not None else None
    return LayerProfile((counts[1] - counts[0]) / span, kernel_us, graph_us)


def _graph_us(forward: Any, replays: int) -> float | None:
    """Microseconds per replay of ``forward`` captured as a CUDA graph (None, with the reason printed, if capture
    fails: this stand-in batch is not the runner's graph batch)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            forward()
        torch.cuda.current_stream().wait_stream(stream)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            forward()
        for _ in range(10):
            g.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            g.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1000 / replays
    except Exception as e:  # noqa: BLE001 - a probe: report and go on with the counts
        print(f"  (graph replay not timed: {type(e).__name__}: {e})")
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["qwen3-0.6b", "llama-3.1-8b"])
    parser.add_argument("--sms", type=int, default=132, help="streaming multiprocessors split decisions assume")
    parser.add_argument("--profile", action="store_true", help="(GPU) also count device kernels with the profiler")
    args = parser.parse_args(argv)
    import sgl.kernels._common as common

    cuda = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        common._sm_count = lambda device_type, index: args.sms  # type: ignore[assignment]
    where = torch.cuda.get_device_name() if cuda else f"TRITON_INTERPRET=1 on the CPU, splits for {args.sms} SMs"
    print(f"kernels per decoder layer, batch-1 decode, bf16 ({where})")
    for name in args.models:
        for fused in (False, True):
            names = layer_launches(name, fused, device)
            label = "fused" if fused else "unfused"
            print(f"\n{name} {label}: {len(names)} launches per layer")
            for kernel, n in Counter(names).items():
                print(f"  {n} x {kernel}")
            if cuda and args.profile:
                prof = profile_layers(name, fused, device)
                print(f"  profiler: {prof.kernels:.1f} device kernels per layer, "
                      f"{sum(prof.kernel_us.values()):.1f} us of kernel time per layer")
                for kernel, us in sorted(prof.kernel_us.items(), key=lambda kv: -kv[1]):
                    print(f"    {us:7.1f} us  {kernel[:90]}")
                if prof.graph_us is not None:
                    print(f"  graph replay: {prof.graph_us:.1f} us per layer (kernels and the gaps between them)")


if __name__ == "__main__":
    main()
