"""The scheduler's host time per decode step at large batch, part by part, the forward's own time apart (a CPU probe).

python -m benchmarks.sched_host_probe [MODEL] [--batches 256,512] [--prompt 16] [--tokens 128] [--reps 3]
    [--overlap] [--profile N] [--json PATH]

MODEL is ``demo`` (default: the tiny CPU model, so the forward is cheap and the host's work shows) or a config of
``sgl/core/model/configs`` run with dummy weights. Per batch size B the probe stops the engine's scheduler thread,
admits B requests of ``--prompt`` tokens (distinct prompts, greedy, ignore_eos, ``--tokens`` new tokens each), runs
their prefills untimed, then times every step until all have finished, split into parts with
``spec_host_probe.PhaseClock`` (exclusive wall time: a part excludes the parts called inside it):

- ``batch preparation``: the decode batch's planning (slots, req_to_token host mirror: ``decode_batch``), the
  prefill check, and the ForwardBatch build;
- ``forward``: the model's forward and logits, reported apart and excluded from ``host_us_per_step``;
- ``sampling host``: the per-row sampling parameters packed (``SamplingBatchInfo.build``), the sampler call and the
  copy of the ids home; the sampler call itself (``sampler (argmax)``) is device work that the CPU happens to do:
  reported apart and excluded, like the forward;
- ``output processing``: tokens appended and stop conditions (``process_decode``), the tokens read home (resolve);
- ``cache/ledger``: requests finished and released (``SchedulerState.finish``: the radix cache insert, slots freed);
- ``output emission``: ``ReqOutput`` per changed request (``_collect_outputs``);
- ``other``: the rest of ``Scheduler.step`` (counters, the loop's own glue).

Each line is JSON for one batch: median over ``--reps`` runs of host µs per decode step and per decode row (a row
is one request in one decode step), and the parts in µs per decode step. ``--overlap`` forces the overlap loop (on
the CPU its host work is the same, nothing runs concurrently). ``--profile N`` prints a cProfile of one more run per
batch (top N by own time), paused inside the forward and logits. Torch runs one thread (``SGL_CPU_THREADS=1``
unless set): the timings are the host's.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import sgl
from benchmarks.spec_host_probe import PhaseClock, patched
from benchmarks.spec_replay import model_path
from sgl.core.ipc import GenerateReq
from sgl.core.sampling.params import SamplingParams

GROUPS = {  # part name as timed -> part reported
    "decode batch": "batch preparation", "prefill check": "batch preparation", "forward batch build": "batch preparation",
    "forward": "forward", "logits": "forward",
    "sampling params": "sampling host", "sampler": "sampler (argmax)", "copy home": "sampling host",
    "sampling": "sampling host",
    "resolve": "output processing", "output processing": "output processing",
    "finish/release": "cache/ledger", "output emission": "output emission", "feature settle": "other",
}
EXCLUDED = ("forward", "sampler (argmax)")  # device work: the CPU computes it, a GPU runs it


def targets(sched: Any) -> list[tuple[Any, str, str]]:
    from sgl.core.sampling.batch_info import SamplingBatchInfo
    from sgl.core.scheduler import decode, overlap, step

    return [
        (decode, "decode_batch", "decode batch"), (overlap, "decode_batch", "decode batch"),
        (sched.prefill, "schedule", "prefill check"), (step, "build_forward_batch", "forward batch build"),
        (sched.runner, "forward", "forward"), (sched.runner, "compute_logits", "logits"),
        (SamplingBatchInfo, "build", "sampling params"), (sched.executor, "sampler", "sampler"),
        (sched.executor, "_sample", "sampling"), (sched.executor, "_copy_home", "copy home"),
        (sched.executor, "resolve", "resolve"), (sched.results, "process_decode", "output processing"),
        (sched.state, "finish", "finish/release"), (sched, "_collect_outputs", "output emission"),
        (sched, "_settle_features", "feature settle"),
    ]


class Run(NamedTuple):
    decode_steps: int
    decode_rows: int
    seconds: float  # wall time of the timed steps
    parts: dict[str, float]  # seconds per timed part, summed


def admit(sched: Any, batch: int, prompt: int, tokens: int, tag: str) -> None:
    """``batch`` requests with distinct prompts; their prefills (untimed) run until every one decodes."""
    sp = SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        ids = [100 + (i * 7 + j) % 900 for j in range(prompt)]
        ids[0] = 1000 + i  # no shared prefixes: each request decodes on its own KV
        sched.add_request(GenerateReq(f"{tag}-{i}", ids, sp))
    while sched.state.waiting or sched.state.chunked is not None:
        sched.step()


def drive(sched: Any, batch: int, prompt: int, tokens: int, clock: PhaseClock, tag: str) -> Run:
    admit(sched, batch, prompt, tokens, tag)
    c = sched.state.counters
    steps0, rows0 = c.decode_steps, c.decode_rows
    clock.reset()
    t0 = time.perf_counter()
    while not sched.is_idle:
        sched.step()
    seconds = time.perf_counter() - t0
    return Run(c.decode_steps - steps0, c.decode_rows - rows0, seconds, dict(clock.totals))


def summarise(batch: int, runs: list[Run]) -> dict[str, Any]:
    def host(r: Run) -> float:
        return r.seconds - sum(v for k, v in r.parts.items() if GROUPS.get(k) in EXCLUDED)

    ordered = sorted(runs, key=lambda r: host(r) / max(r.decode_steps, 1))
    mid = ordered[len(ordered) // 2]
    n = max(mid.decode_steps, 1)
    parts: dict[str, float] = {}
    for k, v in mid.parts.items():
        parts[GROUPS.get(k, k)] = parts.get(GROUPS.get(k, k), 0.0) + v
    parts["other"] = parts.get("other", 0.0) + mid.seconds - sum(mid.parts.values())
    return {
        "batch": batch, "decode_steps": mid.decode_steps, "rows_per_step": round(mid.decode_rows / n, 1),
        "host_us_per_step": round(statistics.median(host(r) / max(r.decode_steps, 1) for r in runs) * 1e6, 1),
        "host_us_per_row": round(statistics.median(host(r) / max(r.decode_rows, 1) for r in runs) * 1e6, 3),
        "runs_host_us_per_row": [round(host(r) / max(r.decode_rows, 1) * 1e6, 3) for r in runs],
        "parts_us_per_step": {k: round(v / n * 1e6, 1) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
    }


def engine_kwargs(batches: list[int], prompt: int, tokens: int, overlap: bool) -> dict[str, Any]:
    context = prompt + tokens + 16
    opts: dict[str, Any] = {
        "load_format": "dummy", "context_length": context, "max_running_requests": max(batches),
        "max_total_tokens": max(batches) * context + 4096, "max_prefill_tokens": 16384,
        "chunked_prefill_size": 16384, "log_level": "warning",
    }
    if overlap:
        opts["force_overlap_schedule"] = True
    return opts


@contextmanager
def unprofiled(prof: cProfile.Profile, owner: Any, attrs: tuple[str, ...]) -> Iterator[None]:
    """``owner``'s methods ``attrs`` run with ``prof`` paused, so the profile shows the host's work only."""
    def paused(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            prof.disable()
            try:
                return fn(*args, **kwargs)
            finally:
                prof.enable()
        return call

    saved = {a: getattr(owner, a) for a in attrs}
    for a, fn in saved.items():
        setattr(owner, a, paused(fn))
    try:
        yield
    finally:
        for a in attrs:
            delattr(owner, a)


def parse(argv: list[str]) -> tuple[str, dict[str, Any]]:
    flags = {"--batches": "256,512", "--prompt": "16", "--tokens": "128", "--reps": "3", "--profile": "0",
             "--json": ""}
    switches = ("--overlap",)
    unknown = [a for a in argv if a.startswith("-") and a not in (*flags, *switches)]
    if unknown:
        help_asked = {"-h", "--help"} & set(unknown)
        raise SystemExit(__doc__ if help_asked else f"sched_host_probe: unknown option {unknown[0]}")
    values = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in flags}
    names = [a for a in argv if not a.startswith("--") and a not in values]
    opt = {f: argv[argv.index(f) + 1] if f in argv else d for f, d in flags.items()}
    return (names[0] if names else "demo"), {
        "batches": [int(b) for b in opt["--batches"].split(",") if b], "prompt": int(opt["--prompt"]),
        "tokens": int(opt["--tokens"]), "reps": int(opt["--reps"]), "profile": int(opt["--profile"]),
        "json": opt["--json"], "overlap": "--overlap" in argv,
    }


def main(argv: list[str]) -> list[dict[str, Any]]:
    name, args = parse(argv)
    os.environ.setdefault("SGL_CPU_THREADS", "1")
    engine = sgl.Engine(model_path=model_path(name), **engine_kwargs(args["batches"], args["prompt"], args["tokens"],
                                                                      args["overlap"]))
    sched = engine.runtime.scheduler
    engine.shutdown()  # NOTE: stops its thread; the scheduler object stays usable from here
    clock = PhaseClock()
    rows: list[dict[str, Any]] = []
    try:
        drive(sched, min(args["batches"]), args["prompt"], 8, clock, "warm")
        for b in args["batches"]:
            with patched(clock, targets(sched)):
                runs = [drive(sched, b, args["prompt"], args["tokens"], clock, f"b{b}r{i}")
                        for i in range(args["reps"])]
            row = {"model": name, "overlap": sched.overlap is not None, "prompt": args["prompt"],
                   "tokens": args["tokens"], "load_1min": round(os.getloadavg()[0], 2), **summarise(b, runs)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args["profile"]:
                prof = cProfile.Profile()
                with unprofiled(prof, sched.runner, ("forward", "compute_logits")):
                    prof.enable()
                    drive(sched, b, args["prompt"], args["tokens"], clock, f"b{b}prof")
                    prof.disable()
                print(f"--- cProfile: batch {b}, {args['tokens']} tokens (top {args['profile']} by own time)")
                pstats.Stats(prof).sort_stats("tottime").print_stats(args["profile"])
    finally:
        sched.close()
    if args["json"]:
        Path(args["json"]).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
