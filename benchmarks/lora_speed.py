"""Multi-LoRA serving cost: throughput of a batch spread over N adapters against the same workload without LoRA,
batch-1 decode on one adapter against the base model, and the time to load an adapter while serving (issue 15).

python -m benchmarks.lora_speed MODEL [--ranks 16,64] [--adapters 8] [--requests 32] [--input-len 512]
                                       [--output-len 128]

MODEL: a shipped config name (llama-3.1-8b, qwen3-0.6b: dummy weights) or ``demo`` (the demo model, any platform).
Adapters are seeded random PEFT directories (``benchmarks/lora_adapters.py``) on every q/k/v/o/gate/up/down
projection. Every engine runs the defaults (graphs, overlap; with LoRA the default backend, triton); the JSON says
which LoRA kernel ran and whether the decode graphs replayed. On CUDA each engine's decode is also profiled (kernel
time per step, the segment GEMMs' share of it): a ratio below the target with the device time close to the base's
was lost on the host. One JSON line per engine, then a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

import sgl
from benchmarks.decode_speed import batch1_decode_tok_s
from benchmarks.lora_adapters import write_adapter

TARGET = 0.85  # the bar for both ratios
SGMV_KERNELS = ("_shrink_kernel", "_expand_kernel")  # sgl.kernels.lora's Triton kernels
PROFILE_TOKENS = 64


@dataclass(frozen=True)
class DeviceProfile:
    us_per_step: float  # kernel time per decode step
    sgmv_share: float  # of it, the fraction in the segment GEMMs


@dataclass(frozen=True)
class DeviceProfiles:
    """Batch-1 decode, and a decode of the workload's batch size, both on short prompts (CUDA only)."""

    b1: DeviceProfile | None
    batch: DeviceProfile | None


@dataclass(frozen=True)
class BaseFigures:
    """The engine without LoRA."""

    model: str
    throughput_tok_s: float  # WorkloadRun.tok_s
    decode_tok_s: float  # batch 1
    graphs: bool  # the engine holds decode graphs
    graph_replays: int  # decode steps of the timed workload that replayed a graph
    device: DeviceProfiles  # CUDA only


@dataclass(frozen=True)
class LoRAFigures:
    """The engine with ``adapters`` adapters of one rank, against the base engine's figures."""

    model: str
    rank: int
    adapters: int
    lora_kernel: str  # the backend's update function: apply_triton (segment GEMMs) or apply_reference (torch)
    throughput_tok_s: float
    throughput_ratio: float
    decode_tok_s: float  # batch 1 on one adapter
    decode_ratio: float
    base_rows_decode_tok_s: float  # batch 1 without an adapter, on this engine (the cost of LoRA being on)
    load_s: float  # median of load_lora_adapter over fresh adapters (read + checked into host memory)
    load_s_all: list[float]
    first_request_s: float  # median 1-token request on the just-loaded adapter (its upload into a device slot)
    resident_request_s: float  # the same request on an adapter already in a slot
    outputs_differ: float  # fraction of the workload's requests whose tokens differ from the base engine's
    graphs: bool
    graph_replays: int
    device: DeviceProfiles  # CUDA only; against the base engine's, it splits a ratio into device and host time


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    output_len: int

    @property
    def params(self) -> dict[str, Any]:
        return {"max_new_tokens": self.output_len, "temperature": 0.0, "ignore_eos": True}


def random_prompts(vocab: int, count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab - 10) for _ in range(length)] for _ in range(count)]


class ReplayCounter:
    """Counts the decode-graph replays of an in-process engine (wraps its graph runner's ``replay``)."""

    def __init__(self, engine: sgl.Engine) -> None:
        self.count = 0
        runner = engine.runtime.scheduler.runner.graph_runner
        self.graphs = runner is not None
        if runner is not None:
            replay = runner.replay

            def counted(fb: Any) -> torch.Tensor:
                self.count += 1
                return replay(fb)

            runner.replay = counted  # type: ignore[method-assign]


class WorkloadRun(NamedTuple):
    tok_s: float  # output tokens / wall time of the whole workload (prefill included)
    outputs: list[list[int]]
    graph_replays: int


def timed_workload(engine: sgl.Engine, work: Workload, warm: Workload, loras: list[str] | None,
                   counter: ReplayCounter) -> WorkloadRun:
    """``work`` after a warm-up of the same shape on other prompts (so no prefix is cached)."""
    engine.generate(input_ids=warm.prompts, sampling_params=warm.params, lora_path=loras)
    before = counter.count
    t0 = time.perf_counter()
    outs = engine.generate(input_ids=work.prompts, sampling_params=work.params, lora_path=loras)
    dt = time.perf_counter() - t0
    return WorkloadRun(sum(o["meta_info"]["completion_tokens"] for o in outs) / dt, [o["output_ids"] for o in outs],
                       counter.count - before)


def device_profile(engine: sgl.Engine, prompts: list[list[int]], loras: list[str] | None) -> DeviceProfile | None:
    """Kernel time per step of a decode-heavy run (16-token prompts, PROFILE_TOKENS new tokens each), profiled after
    a warm-up; None where no CUDA kernel ran (another platform)."""
    if not torch.cuda.is_available():
        return None
    from torch.profiler import ProfilerActivity, profile

    sp = {"max_new_tokens": PROFILE_TOKENS, "temperature": 0.0, "ignore_eos": True}
    engine.generate(input_ids=prompts, sampling_params=sp, lora_path=loras)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate(input_ids=prompts, sampling_params=sp, lora_path=loras)
    total = sgmv = 0.0
    for ev in prof.key_averages():
        t = float(getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0.0))
        total += t
        if any(k in ev.key for k in SGMV_KERNELS):
            sgmv += t
    return DeviceProfile(round(total / PROFILE_TOKENS, 1), round(sgmv / total, 3)) if total else None


def device_profiles(engine: sgl.Engine, vocab: int, count: int, loras: list[str] | None, seed: int) -> DeviceProfiles:
    short = random_prompts(vocab, count, 16, seed)
    return DeviceProfiles(device_profile(engine, short[:1], None if loras is None else loras[:1]),
                          device_profile(engine, short, loras))


class LoadTimes(NamedTuple):
    load_s: list[float]  # load_lora_adapter of each fresh adapter
    first_request_s: list[float]  # a 1-token request on it right after (its upload into a device slot)
    resident_request_s: list[float]  # the same request on an adapter already resident


def one_token_s(engine: sgl.Engine, prompt: list[int], lora: str) -> float:
    t0 = time.perf_counter()
    engine.generate(input_ids=prompt, sampling_params={"max_new_tokens": 1, "temperature": 0.0}, lora_path=lora)
    return time.perf_counter() - t0


def load_times(engine: sgl.Engine, fresh: list[str], resident: str, probes: list[list[int]]) -> LoadTimes:
    """Loads, uses and unloads each fresh adapter in turn (so every load finds the same pool)."""
    out = LoadTimes([], [], [])
    for i, path in enumerate(fresh):
        t0 = time.perf_counter()
        engine.load_lora_adapter(f"fresh{i}", path)
        out.load_s.append(time.perf_counter() - t0)
        out.first_request_s.append(one_token_s(engine, probes[2 * i], f"fresh{i}"))
        out.resident_request_s.append(one_token_s(engine, probes[2 * i + 1], resident))
        engine.unload_lora_adapter(f"fresh{i}")
    return out


class _Setup(NamedTuple):
    model: str
    model_dir: Path
    engine_kw: dict[str, Any]
    vocab: int
    work: Workload
    warm: Workload
    decode_tokens: int
    seed: int


def _base_run(setup: _Setup) -> tuple[BaseFigures, WorkloadRun, float]:
    with sgl.Engine(model_path=str(setup.model_dir), **setup.engine_kw) as engine:
        counter = ReplayCounter(engine)
        run = timed_workload(engine, setup.work, setup.warm, None, counter)
        decode = batch1_decode_tok_s(engine, setup.decode_tokens)
        device = device_profiles(engine, setup.vocab, len(setup.work.prompts), None, setup.seed + 3)
    return BaseFigures(setup.model, _r(run.tok_s), _r(decode), counter.graphs, run.graph_replays, device), run, decode


def _lora_run(setup: _Setup, rank: int, adapters: int, loads: int, base: WorkloadRun,
              base_decode: float) -> LoRAFigures:
    names = [f"a{i}" for i in range(adapters)]
    loras = [names[i % adapters] for i in range(len(setup.work.prompts))]
    probes = random_prompts(setup.vocab, 2 * loads, 16, setup.seed + 2)
    with tempfile.TemporaryDirectory(prefix=f"sgl-lora-r{rank}-") as tmp:
        paths = [write_adapter(setup.model_dir, Path(tmp) / n, rank, seed=1000 * rank + i)
                 for i, n in enumerate(names)]
        fresh = [write_adapter(setup.model_dir, Path(tmp) / f"fresh{i}", rank, seed=1000 * rank + 500 + i)
                 for i in range(loads)]
        with sgl.Engine(model_path=str(setup.model_dir), enable_lora=True,
                        lora_paths=[f"{n}={p}" for n, p in zip(names, paths)],
                        max_lora_rank=rank, max_loras_per_batch=adapters, **setup.engine_kw) as engine:
            counter = ReplayCounter(engine)
            kernel = engine.runtime.features.lora.apply_fn.__name__  # type: ignore[union-attr]
            run = timed_workload(engine, setup.work, setup.warm, loras, counter)
            decode = batch1_decode_tok_s(engine, setup.decode_tokens, lora_path=names[0])
            base_rows = batch1_decode_tok_s(engine, setup.decode_tokens)
            times = load_times(engine, fresh, names[0], probes)
            device = device_profiles(engine, setup.vocab, len(loras), loras, setup.seed + 3)
    differ = sum(a != b for a, b in zip(run.outputs, base.outputs)) / len(run.outputs)
    return LoRAFigures(
        setup.model, rank, adapters, kernel, _r(run.tok_s), _r(run.tok_s / base.tok_s, 3), _r(decode),
        _r(decode / base_decode, 3), _r(base_rows), _r(statistics.median(times.load_s), 4),
        [_r(s, 4) for s in times.load_s], _r(statistics.median(times.first_request_s), 4),
        _r(statistics.median(times.resident_request_s), 4), _r(differ, 3), counter.graphs, run.graph_replays,
        device,
    )


def _free_device() -> None:
    """Drops the engine just closed (its cycles included) before the next one is built."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _r(x: float, digits: int = 1) -> float:
    return round(x, digits)


def measure(
    model: str, ranks: Sequence[int] = (16, 64), adapters: int = 8, requests: int = 32, input_len: int = 512,
    output_len: int = 128, decode_tokens: int = 256, loads: int = 3, seed: int = 0, **engine_kw: Any,
) -> Iterator[BaseFigures | LoRAFigures]:
    """The base engine's figures, then one LoRAFigures per rank, one engine at a time; ``engine_kw`` goes to every
    ``sgl.Engine``. Every engine sees the same prompts and dummy-weight seed."""
    from sgl.core.demo_model import ensure_demo_model
    from sgl.core.model.shipped import materialize

    if loads < 1:
        raise ValueError(f"loads must be >= 1, got {loads}")
    model_dir = ensure_demo_model() if model == "demo" else materialize(model)
    kw: dict[str, Any] = {"context_length": 4096, "max_total_tokens": 65536, "max_running_requests": 64}
    if model != "demo":
        kw["load_format"] = "dummy"
    kw.update(engine_kw)
    vocab = int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
    setup = _Setup(model, model_dir, kw, vocab, Workload(random_prompts(vocab, requests, input_len, seed), output_len),
                   Workload(random_prompts(vocab, requests, input_len, seed + 1), output_len), decode_tokens, seed)
    base, base_run, base_decode = _base_run(setup)
    _free_device()
    yield base
    for rank in ranks:
        figures = _lora_run(setup, rank, adapters, loads, base_run, base_decode)
        _free_device()
        yield figures


def _profile(p: DeviceProfile | None) -> str:
    return "-" if p is None else f"{p.us_per_step:.0f}/{p.sgmv_share:.0%}"


def table(base: BaseFigures, rows: Sequence[LoRAFigures]) -> str:
    """Throughput and batch-1 decode with their ratios to the base engine. The device columns: kernel time per decode
    step (µs) / the segment GEMMs' share of it, at batch 1 and at the workload's batch size (CUDA only): a ratio
    missed with device time to spare is host time."""
    head = (f"{'engine':<10} {'tok/s':>9} {'ratio':>6} {'b1 tok/s':>9} {'ratio':>6} {'load ms':>8} "
            f"{'kernel':>16} {'graphs':>6} {'device b1':>10} {'device batch':>12}")
    lines = [head, f"{'base':<10} {base.throughput_tok_s:>9.1f} {'':>6} {base.decode_tok_s:>9.1f} {'':>6} {'':>8} "
                   f"{'':>16} {str(base.graphs):>6} {_profile(base.device.b1):>10} {_profile(base.device.batch):>12}"]
    for r in rows:
        lines.append(f"{f'lora r{r.rank}':<10} {r.throughput_tok_s:>9.1f} {r.throughput_ratio:>6.3f} "
                     f"{r.decode_tok_s:>9.1f} {r.decode_ratio:>6.3f} {r.load_s * 1e3:>8.1f} {r.lora_kernel:>16} "
                     f"{str(r.graphs):>6} {_profile(r.device.b1):>10} {_profile(r.device.batch):>12}")
    lines.append(f"target: both ratios >= {TARGET}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="shipped config name (dummy weights) or 'demo'")
    p.add_argument("--ranks", default="16,64", help="comma-separated adapter ranks, one LoRA engine each")
    p.add_argument("--adapters", type=int, default=8, help="adapters the requests are spread over")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    args = p.parse_args(argv)
    args.ranks = [int(r) for r in args.ranks.split(",")]
    for field in ("adapters", "requests", "input_len", "output_len"):
        if getattr(args, field) < 1:
            p.error(f"--{field.replace('_', '-')} must be >= 1")
    if min(args.ranks) < 1:
        p.error("--ranks must be >= 1")
    return args


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    results = []
    for fig in measure(args.model, args.ranks, args.adapters, args.requests, args.input_len, args.output_len):
        print(json.dumps(asdict(fig)), flush=True)
        results.append(fig)
    base, rows = results[0], results[1:]
    assert isinstance(base, BaseFigures)
    print(table(base, [r for r in rows if isinstance(r, LoRAFigures)]))


if __name__ == "__main__":
    main(sys.argv[1:])
