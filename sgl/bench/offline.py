"""Offline throughput: one in-process Engine, a whole workload submitted at once, exact output lengths.

Every request sets ``ignore_eos`` so outputs have exactly the lengths the workload asks for, and the same workload
(same seed) gives the same token counts on every run: radix on and off are compared on identical work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import time
from dataclasses import dataclass
from typing import Any

from sgl.bench.cpu_time import cpu_seconds
from sgl.bench.report import format_kv, format_table
from sgl.bench.workloads import BenchRequest, WorkloadSpec
from sgl.core.config import ServerArgs

WARMUP_PROMPT_LEN = 16
WARMUP_BATCH = 8
SCHEDULER_COUNTERS = ("steps", "decode_steps", "decode_rows", "overlapped_steps", "mixed_steps", "retractions",
                      "prefill_ms", "decode_ms")


@dataclass(frozen=True)
class OfflineResult:
    label: str
    num_requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    duration_s: float
    # what the scheduler did during the run (steps, retractions, ...): how a figure is explained, not just stated
    scheduler: dict[str, float] = dataclasses.field(default_factory=dict)
    # speculative decoding: generated tokens per verify forward (SGLang's meta_info spec_verify_ct); None without
    accept_length: float | None = None
    # CPU seconds of this process (caller, request front and scheduler thread) over the timed run; None off Linux
    cpu_s: float | None = None

    @property
    def request_throughput(self) -> float:
        return self.num_requests / self.duration_s

    @property
    def input_throughput(self) -> float:
        return self.input_tokens / self.duration_s

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.duration_s

    @property
    def total_throughput(self) -> float:
        return (self.input_tokens + self.output_tokens) / self.duration_s

    @property
    def cached_fraction(self) -> float:
        return self.cached_tokens / self.input_tokens if self.input_tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "request_throughput": self.request_throughput, "input_throughput": self.input_throughput,
            "output_throughput": self.output_throughput, "total_throughput": self.total_throughput,
            "cached_fraction": self.cached_fraction,
        }

    def rows(self) -> list[tuple[str, Any]]:
        return [
            ("Successful requests:", self.num_requests),
            ("Input tokens:", self.input_tokens),
            ("Output tokens:", self.output_tokens),
            ("Cached input tokens:", self.cached_tokens),
            ("Cached-token fraction:", round(self.cached_fraction, 4)),
            ("Duration (s):", self.duration_s),
            ("Request throughput (req/s):", self.request_throughput),
            ("Input token throughput (tok/s):", self.input_throughput),
            ("Output token throughput (tok/s):", self.output_throughput),
            ("Total token throughput (tok/s):", self.total_throughput),
            *((("Accept length:", self.accept_length),) if self.accept_length is not None else ()),
            *((f"Scheduler {k.replace('_', ' ')}:", v) for k, v in self.scheduler.items()),
            *((("Process CPU per output token (us):", self.cpu_s * 1e6 / max(self.output_tokens, 1)),)
              if self.cpu_s is not None else ()),
        ]

    def format(self) -> str:
        return format_kv(f"Offline Throughput ({self.label})", self.rows())


def make_engine(args: ServerArgs) -> Any:
    from sgl.core.engine import Engine

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
    return Engine(**fields)


def _params(req: BenchRequest) -> dict[str, Any]:
    return {"max_new_tokens": req.output_len, "ignore_eos": True, "temperature": 0.0}


async def _run_all(engine: Any, reqs: list[BenchRequest], progress: bool) -> list[dict[str, Any]]:
    """Submits every request at once (in workload order) and ticks the bar as each one finishes."""
    from tqdm import tqdm

    async def one(i: int, r: BenchRequest) -> tuple[int, dict[str, Any]]:
        return i, await engine.async_generate(input_ids=r.input_ids, sampling_params=_params(r))

    tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(reqs)]
    results: list[dict[str, Any]] = [{} for _ in reqs]
    with tqdm(total=len(reqs), desc="requests", unit="req", disable=not progress) as bar:
        for fut in asyncio.as_completed(tasks):
            i, out = await fut
            results[i] = out
            bar.update(1)
    return results


def _warm_up(engine: Any, vocab: int, reqs: list[BenchRequest]) -> None:
    """Pays first-call costs (allocation, kernel compilation for the workload's shapes) before the clock starts.

    NOTE: a short request and a batch shaped like the workload's first requests (shifted ids, so they share no
    prefix with it), then a cache flush: each engine of a --compare-radix pair starts equally warm.
    """
    sp = {"max_new_tokens": 2, "ignore_eos": True, "temperature": 0.0}
    engine.generate(input_ids=[i % vocab for i in range(WARMUP_PROMPT_LEN)], sampling_params=sp)
    shaped = [[(t + 1) % vocab for t in r.input_ids] for r in reqs[:WARMUP_BATCH]]
    if shaped:
        engine.generate(input_ids=shaped, sampling_params=sp)
    engine.flush_cache()


def _check(results: list[dict[str, Any]], reqs: list[BenchRequest]) -> None:
    for out, r in zip(results, reqs):
        meta = out["meta_info"]
        reason = meta.get("finish_reason") or {}
        if reason.get("type") == "abort":
            raise RuntimeError(f"request {meta.get('id')} was aborted: {reason.get('message')}")
        if meta["completion_tokens"] != r.output_len:
            raise RuntimeError(f"request {meta.get('id')} produced {meta['completion_tokens']} of {r.output_len} tokens")


def run_offline(args: ServerArgs, spec: WorkloadSpec, label: str = "", progress: bool = True) -> OfflineResult:
    """Builds a fresh Engine, runs the workload once, shuts the engine down."""
    engine = make_engine(args)
    platform = engine.runtime.platform
    try:
        vocab = min(engine.runtime.scheduler.runner.vocab_size, engine.tokenizer.vocab_size)
        reqs = spec.build(vocab)
        _warm_up(engine, vocab, reqs)
        before = engine.get_server_info()
        cpu_before = cpu_seconds(os.getpid())
        start = time.perf_counter()
        results = asyncio.run(_run_all(engine, reqs, progress))
        duration = time.perf_counter() - start
        cpu_after = cpu_seconds(os.getpid())
        after = engine.get_server_info()
        counters = {k: after[k] - before[k] for k in SCHEDULER_COUNTERS if k in after}
        counters["max_total_tokens"] = after["max_total_tokens"]
        if "new_token_ratio" in after:  # admission's reserve per remaining output token, at the end of the run
            counters["new_token_ratio"] = after["new_token_ratio"]
    finally:
        engine.shutdown()
        del engine
        gc.collect()
        # NOTE: the allocator keeps the freed pool cached; a server launched next (--compare-offline) needs it back
        platform.empty_cache()
    _check(results, reqs)
    metas = [r["meta_info"] for r in results]
    verify_forwards = sum(m.get("spec_verify_ct", 0) for m in metas)
    return OfflineResult(
        label=label or ("radix on" if not args.disable_radix_cache else "radix off"),
        num_requests=len(reqs),
        input_tokens=sum(m["prompt_tokens"] for m in metas),
        output_tokens=sum(m["completion_tokens"] for m in metas),
        cached_tokens=sum(m["cached_tokens"] for m in metas),
        duration_s=duration,
        scheduler=counters,
        accept_length=(sum(m["completion_tokens"] for m in metas) / verify_forwards) if verify_forwards else None,
        cpu_s=None if cpu_before is None or cpu_after is None else cpu_after - cpu_before,
    )


@dataclass(frozen=True)
class RadixComparison:
    """The same workload with the radix cache on, then off, each in a fresh Engine."""

    radix_on: OfflineResult
    radix_off: OfflineResult

    @property
    def speedup(self) -> float:
        """How many times faster the radix cache made the whole workload (duration off / duration on)."""
        return self.radix_off.duration_s / self.radix_on.duration_s

    def as_dict(self) -> dict[str, Any]:
        return {"radix_on": self.radix_on.as_dict(), "radix_off": self.radix_off.as_dict(), "speedup": self.speedup}

    def format(self) -> str:
        rows = [(k, a, b) for (k, a), (_, b) in zip(self.radix_on.rows(), self.radix_off.rows())]
        table = format_table(["", "radix on", "radix off"], rows)
        return f"{table}\nRadix-cache speed-up (duration off / on): {self.speedup:.2f}x"


def compare_radix(args: ServerArgs, spec: WorkloadSpec, progress: bool = True) -> RadixComparison:
    on = run_offline(args.replace(disable_radix_cache=False), spec, "radix on", progress)
    off = run_offline(args.replace(disable_radix_cache=True), spec, "radix off", progress)
    return RadixComparison(on, off)
