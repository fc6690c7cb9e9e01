"""One-batch latency: one prefill of a whole batch, then its decode steps, through the real Scheduler.

The requests go in as GenerateReq messages and the scheduler's own step() runs them, so the figures include
scheduling, input preparation and sampling, as a server pays them. Timings are bracketed by the platform's
synchronize(), so on an asynchronous device they measure finished work, not queued kernels.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from sgl.bench.report import format_table
from sgl.core.config import ServerArgs
from sgl.core.ipc import GenerateReq
from sgl.core.sampling.params import SamplingParams

WARMUP_OUTPUT_LEN = 2


class OneBatchResult(NamedTuple):
    batch_size: int
    input_len: int
    output_len: int
    prefill_latency_s: float
    prefill_throughput: float  # prompt tokens / prefill latency
    decode_steps: int
    decode_median_ms: float
    decode_throughput: float  # batch * steps / decode time
    total_latency_s: float

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


HEADERS = ["batch", "input", "output", "prefill (s)", "prefill tok/s", "decode median (ms)", "decode tok/s",
           "total (s)"]


def format_results(results: Sequence[OneBatchResult]) -> str:
    rows = [[r.batch_size, r.input_len, r.output_len, r.prefill_latency_s, r.prefill_throughput,
             r.decode_median_ms, r.decode_throughput, r.total_latency_s] for r in results]
    return format_table(HEADERS, rows)


def one_batch_args(args: ServerArgs, max_batch: int, input_len: int, output_len: int) -> ServerArgs:
    """Server args under which the largest batch prefills in one step: no chunking, a budget that fits it."""
    tokens = max_batch * input_len
    return args.replace(
        chunked_prefill_size=-1,
        max_prefill_tokens=max(args.max_prefill_tokens, tokens),
        max_running_requests=max(args.max_running_requests or 0, max_batch),
    )


def _timed(platform: Any, fn: Any) -> tuple[float, Any]:
    platform.synchronize()
    start = time.perf_counter()
    out = fn()
    platform.synchronize()
    return time.perf_counter() - start, out


class _Batch:
    """Submits one batch to the scheduler and times its prefill step and each decode step."""

    def __init__(self, runtime: Any, vocab: int, rng: random.Random) -> None:
        self.runtime = runtime
        self.scheduler = runtime.scheduler
        self.vocab = vocab
        self.rng = rng
        self._next = 0

    def run(self, batch_size: int, input_len: int, output_len: int) -> OneBatchResult:
        sched, platform = self.scheduler, self.runtime.platform
        sched.flush_cache()  # NOTE: each batch starts from an empty cache, so no figure hides a prefix hit
        params = SamplingParams(max_new_tokens=output_len, ignore_eos=True, temperature=0.0)
        params.validate(self.vocab)
        for _ in range(batch_size):
            ids = [self.rng.randrange(self.vocab) for _ in range(input_len)]
            sched.add_request(GenerateReq(f"one-batch-{self._next}", ids, params))
            self._next += 1
        prefill_s, outs = _timed(platform, sched.step)
        first = sum(1 for o in outs.outputs if o.new_token_ids)
        if first != batch_size:
            sched_info = sched.info()
            raise RuntimeError(
                f"the prefill of batch {batch_size} x {input_len} did not fit in one step ({first} requests got "
                f"their first token; KV pool {sched_info['max_total_tokens']} tokens): raise --max-total-tokens"
            )
        steps: list[float] = []
        while not sched.is_idle:
            dt, outs = _timed(platform, sched.step)
            steps.append(dt)
            if any(o.finished is not None and o.finished.type == "abort" for o in outs.outputs):
                raise RuntimeError("a request was aborted during decode: raise --max-total-tokens")
        decode_s = sum(steps)
        return OneBatchResult(
            batch_size=batch_size, input_len=input_len, output_len=output_len,
            prefill_latency_s=prefill_s, prefill_throughput=batch_size * input_len / prefill_s,
            decode_steps=len(steps),
            decode_median_ms=statistics.median(steps) * 1e3 if steps else 0.0,
            decode_throughput=batch_size * len(steps) / decode_s if steps else 0.0,
            total_latency_s=prefill_s + decode_s,
        )


def run_one_batch(
    args: ServerArgs, batch_sizes: Sequence[int], input_len: int, output_len: int, seed: int = 0,
    warmup: bool = True,
) -> list[OneBatchResult]:
    """Builds the runtime once and runs each batch size on it, after a batch-1 warm-up that is not reported."""
    from sgl.core.runtime import build_runtime

    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("give one or more batch sizes, each >= 1")
    if input_len < 1 or output_len < 1:
        raise ValueError("input_len and output_len must be >= 1")
    runtime = build_runtime(one_batch_args(args, max(batch_sizes), input_len, output_len))
    runner = runtime.scheduler.runner
    if input_len + output_len > runner.context_len:
        raise ValueError(f"input_len + output_len ({input_len + output_len}) exceeds the context length "
                         f"{runner.context_len}; pass --context-length")
    vocab = min(runner.vocab_size, runtime.tokenizer.vocab_size)
    batch = _Batch(runtime, vocab, random.Random(seed))
    if warmup:
        batch.run(1, input_len, min(output_len, WARMUP_OUTPUT_LEN))
    return [batch.run(bs, input_len, output_len) for bs in batch_sizes]
