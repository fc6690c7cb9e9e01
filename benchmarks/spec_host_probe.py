"""Where a speculative decode step's wall time goes, part by part, against a plain decode step (a CPU or GPU probe).

python -m benchmarks.spec_host_probe [MODEL] [--variants plain,NGRAM,EAGLE3_REPLAY] [--tokens 300] [--reps 3]
    [--steps 3] [--accept 3.0] [--ngram-draft-tokens 4] [--gate] [--overlap] [--sync] [--profile N] [--json PATH]

MODEL is ``demo`` (default: the tiny CPU model, whose forward is so cheap that host work dominates) or a config of
``sgl/core/model/configs`` run with dummy weights. The probe stops the engine's scheduler thread and drives its
``step()`` itself at batch 1 (one request of ``--tokens`` new tokens, greedy, ignore_eos), per variant:

- ``plain``: no speculation (the plain decode step);
- ``NGRAM``: n-gram drafts (``--ngram-draft-tokens`` verified per step) on ``spec_speed.py``'s repetitive prompt;
- ``EAGLE3_REPLAY``: an EAGLE-3 head of the target's shape (dummy weights) drafting ``--steps`` tokens, each draft
  accepted by a seeded draw at the rate that gives ``--accept`` (``replay_proposer.py``), so the step does EAGLE-3's
  real draft and verify work at a chosen acceptance.

Each line of output is JSON: the median (of ``--reps`` runs) wall ms per decode step and per generated token, the
tokens per decode step (the acceptance length), and the step split into parts (ms per decode step, exclusive: a
part's time excludes the parts inside it): draft (its batch build and forward apart), verify slots, verify batch
build, forward, logits, sampling, accept rule, verify glue (building VerifyBatch, slicing the results), output
handling (process_verify/_decode), KV slot freeing, gate bookkeeping (with ``--gate``; else every step drafts),
decode batch scheduling, prefill check, outputs collection, and ``other`` (the step's remainder).
``host_gap_ms_per_step``: the host time from the step's read of the device's tokens to the next forward's start (on
a GPU at batch 1, the device's idle time between steps); ``host_gap_parts_ms_per_step``: the parts that ended inside
it (roughly: a part that began before the read counts its whole own time). NOTE: EAGLE launches the next step's
catch-up extend right after the read, so its gap ends there; the host work after it (applying the tokens, the next
step's scheduling and slots) runs while the device runs that extend, and is idle time only past it.

On a GPU the wall time of a part includes whatever it waited for (a ``.tolist()`` waits for the device); ``--sync``
synchronises the device at the end of every part so device time is charged to the part that launched it (it
changes the timeline: compare parts, not totals), and with CUDA the probe also counts the synchronising calls per
decode step (``torch.cuda.set_sync_debug_mode``). ``--profile N`` prints a cProfile of one more run per variant
(top N by own time). ``transfers_per_step``: host-to-device copies per decode step (``counting_transfers``).
``--overlap`` forces the overlap loop (a GPU platform turns it on itself). On the CPU the
engine's torch threads default to 1 here (``SGL_CPU_THREADS``): the demo model's ops are too small to gain from
more, and on a shared host extra threads only add noise.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch

import sgl
from benchmarks import spec_replay_plugin
from benchmarks.eagle3_dummy_draft import write_eagle3_draft_config
from benchmarks.replay_proposer import corruption_for
from benchmarks.spec_replay import model_path
from benchmarks.spec_replay_plugin import ALGORITHM, PLUGIN, ReplayArgs
from benchmarks.spec_speed import PROMPT
from sgl.core.ipc import GenerateReq
from sgl.core.plugins import add_in_process_plugin, remove_in_process_plugin
from sgl.core.sampling.params import SamplingParams

VARIANTS = ("plain", "NGRAM", ALGORITHM)


READS = ("sampling", "resolve")  # parts that end with the step's read of the device's tokens
LAUNCHES = ("forward", "draft forward")  # parts that start device work


class PhaseClock:
    """Exclusive wall time per named part: a part's time excludes the parts called inside it (a stack).

    Also the host gap: the time from the end of a read of the device's tokens (``READS``) to the start of the next
    forward (``LAUNCHES``), summed. At batch 1 on a GPU that is time the device sits idle (nothing is queued once
    the host has read the tokens), whatever the host does in between."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.gap = 0.0
        self.gap_parts: dict[str, float] = {}  # exclusive time of the parts that ended inside a gap
        self._read_end: float | None = None
        self._stack: list[list[Any]] = []  # [name, start, time spent in children]
        self.sync = sync

    def reset(self) -> None:
        self.totals, self.calls, self.gap, self.gap_parts, self._read_end = {}, {}, 0.0, {}, None

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            now = time.perf_counter()
            if name in LAUNCHES and self._read_end is not None:
                self.gap += now - self._read_end
                self._read_end = None
            self._stack.append([name, now, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                if self.sync is not None:
                    self.sync()
                part, start, children = self._stack.pop()
                end = time.perf_counter()
                spent = end - start
                if part in READS:
                    self._read_end = end
                elif self._read_end is not None and part not in LAUNCHES:
                    self.gap_parts[part] = self.gap_parts.get(part, 0.0) + spent - children
                self.totals[part] = self.totals.get(part, 0.0) + spent - children
                self.calls[part] = self.calls.get(part, 0) + 1
                if self._stack:
                    self._stack[-1][2] += spent

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


@contextmanager
def patched(clock: PhaseClock, targets: list[tuple[Any, str, str]]) -> Iterator[None]:
    """Wraps ``owner.attr`` (a module's global or an object's method) as part ``name`` for the ``with`` block.

    NOTE: a module global is wrapped where it is looked up (``sgl.core.speculative.verify.build_forward_batch``
    is the verify batch build, ``sgl.core.scheduler.step.build_forward_batch`` the plain step's)."""
    saved: list[tuple[Any, str, Any, bool]] = []
    try:
        for owner, attr, name in targets:
            if not hasattr(owner, attr):
                continue
            own = attr in getattr(owner, "__dict__", {})
            saved.append((owner, attr, owner.__dict__.get(attr) if own else None, own))
            setattr(owner, attr, clock.wrap(name, getattr(owner, attr)))
        yield
    finally:
        for owner, attr, old, own in reversed(saved):
            if own:
                setattr(owner, attr, old)
            else:
                delattr(owner, attr)


def targets(sched: Any) -> list[tuple[Any, str, str]]:
    """The parts of a decode step, plain or speculative (names as the output prints them)."""
    from sgl.core.scheduler import plan, step
    from sgl.core.speculative import verify
    from sgl.plugins.speculative import eagle

    out: list[tuple[Any, str, str]] = [
        (plan, "schedule_decode", "decode batch scheduling"), (sched.prefill, "schedule", "prefill check"),
        (step, "build_forward_batch", "forward batch build"), (sched.runner, "forward", "forward"),
        (sched.runner, "compute_logits", "logits"), (sched.executor, "_sample", "sampling"),
        (sched.executor, "_copy_home", "copy home"), (sched.executor, "resolve", "resolve"),
        (sched.results, "process_decode", "output handling"), (sched.results, "process_verify", "output handling"),
        (sched.results, "_free_rejected", "KV slot freeing"), (sched, "_collect_outputs", "outputs collection"),
        (sched, "_settle_features", "feature settle"),
    ]
    algo = sched.speculative
    if algo is not None:
        out += [
            (algo, "decode_step", "spec step (other)"), (algo, "propose", "draft"), (algo, "_draft", "draft"),
            (algo, "_catch_up_early", "draft"), (algo, "run_draft", "draft batch build"),
            (eagle, "draft_inputs", "draft batch build"), (algo, "_waiting_rows", "draft batch build"),
            (eagle, "build_forward_batch", "draft batch build"),
            (verify, "alloc_verify_slots", "verify slots"), (eagle, "alloc_verify_slots", "verify slots"),
            (verify, "run_verify", "verify glue"), (eagle, "run_verify", "verify glue"),
            (verify, "build_forward_batch", "verify batch build"), (verify, "_sample_positions", "sampling"),
            (algo, "accept", "accept rule"),
        ]
        if getattr(algo, "draft", None) is not None:
            out.append((algo.draft, "forward", "draft forward"))
    if sched.gate is not None:
        out += [(sched.gate, "choose", "gate bookkeeping"), (sched.gate, "record", "gate bookkeeping")]
    return out


class Run(NamedTuple):
    decode_steps: int
    tokens: int
    seconds: float  # wall time of the decode steps
    parts: dict[str, float]  # seconds per part, summed over the decode steps
    gap: float  # seconds from reading the device's tokens to the next forward, summed (PhaseClock)
    gap_parts: dict[str, float]  # the parts that ended inside those gaps, seconds summed
    syncs: int  # synchronising calls CUDA warned about (0 elsewhere)
    transfers: int  # host-to-device copies (calls of sgl.core.transfer.to_device, direct or through its helpers)
    verify_replays: int  # verify forwards replayed from graphs
    catch_up_replays: int  # an EAGLE head's catch-up extends replayed from graphs


class TransferCount:
    """Host-to-device copies so far, counted while ``counting_transfers`` runs."""

    calls: int = 0


@contextmanager
def counting_transfers() -> Iterator[TransferCount]:
    """Counts host-to-device copies: every ``sgl`` module's binding of ``sgl.core.transfer.to_device`` (the one way
    the engine copies to the device) is wrapped for the ``with`` block. On a GPU each costs a pinned staging buffer
    and a copy launch, at batch 1 while the device waits; on a CPU the call is the same, the copy is none."""
    from sgl.core import transfer

    count = TransferCount()
    original = transfer.to_device

    def counted(*args: Any, **kwargs: Any) -> Any:
        count.calls += 1
        return original(*args, **kwargs)

    modules = [m for m in list(sys.modules.values())
               if (getattr(m, "__name__", None) or "").startswith("sgl.") and getattr(m, "to_device", None) is original]
    for m in modules:
        m.to_device = counted  # type: ignore[attr-defined]
    try:
        yield count
    finally:
        for m in modules:
            m.to_device = original  # type: ignore[attr-defined]


def replays(sched: Any) -> tuple[int, int]:
    """Verify forwards and EAGLE catch-up extends replayed from graphs so far (0 where there are no graphs)."""
    draft = getattr(sched.speculative, "draft", None)
    found = [getattr(sched.runner, "verify_graphs", None), getattr(draft, "verify_graphs", None)]
    verify, catch_up = (g.replays if g is not None else 0 for g in found)
    return verify, catch_up


def drive(sched: Any, prompt: list[int], tokens: int, clock: PhaseClock, rid: str,
          transfers: TransferCount | None = None) -> Run:
    """One request through the scheduler, its prefill untimed; then every step until it ends, timed."""
    sp = SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)
    sched.add_request(GenerateReq(rid, list(prompt), sp))
    c = sched.state.counters
    while c.generated_tokens == 0 or sched.state.chunked is not None:
        sched.step()
    replays0 = replays(sched)
    steps0, tok0 = c.decode_steps, c.generated_tokens
    copies0 = transfers.calls if transfers is not None else 0
    clock.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        while not sched.is_idle:
            sched.step()
        seconds = time.perf_counter() - t0
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    verify, catch_up = (a - b for a, b in zip(replays(sched), replays0))
    copies = transfers.calls - copies0 if transfers is not None else 0
    return Run(c.decode_steps - steps0, c.generated_tokens - tok0, seconds, dict(clock.totals), clock.gap,
               dict(clock.gap_parts), syncs, copies, verify, catch_up)


def engine_kwargs(variant: str, args: dict[str, Any], draft: Path | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"load_format": "dummy", "context_length": 2048, "max_running_requests": 4,
                            "max_total_tokens": 16384, "log_level": "warning"}
    if args["overlap"]:
        opts["force_overlap_schedule"] = True
    gate = {"disable_speculative_gate": not args["gate"]}
    if variant == "NGRAM":
        return {**opts, **gate, "speculative_algorithm": "NGRAM", "speculative_ngram_capacity": 0,
                "speculative_num_draft_tokens": args["ngram_draft_tokens"]}
    if variant == ALGORITHM:
        steps = args["steps"]
        return {**opts, **gate, "speculative_algorithm": ALGORITHM, "speculative_draft_model_path": str(draft),
                "speculative_num_steps": steps, "speculative_eagle_topk": 1, "speculative_num_draft_tokens": steps + 1,
                "plugin_args": {PLUGIN: ReplayArgs(corrupt=corruption_for(args["accept"], steps), seed=steps)}}
    return opts


def probe_variant(path: str, variant: str, args: dict[str, Any], draft: Path | None) -> dict[str, Any]:
    engine = sgl.Engine(model_path=path, **engine_kwargs(variant, args, draft))
    sched = engine.runtime.scheduler
    engine.shutdown()  # NOTE: stops its thread; the scheduler object stays usable from here
    device = torch.device(sched.runner.device)
    cuda = device.type == "cuda"
    clock = PhaseClock(sched.runner.platform.synchronize if args["sync"] else None)
    prompt = list(PROMPT)
    drive(sched, prompt, 32, clock, "warm")  # graphs, lazy allocations
    runs: list[Run] = []
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    try:
        with patched(clock, targets(sched)), counting_transfers() as transfers:
            for i in range(args["reps"]):
                runs.append(drive(sched, prompt, args["tokens"], clock, f"r{i}", transfers))
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
    if args["profile"]:
        prof = cProfile.Profile()
        prof.enable()
        drive(sched, prompt, args["tokens"], clock, "prof")
        prof.disable()
        print(f"--- cProfile: {variant}, {args['tokens']} tokens at batch 1 (top {args['profile']} by own time)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(args["profile"])
    sched.close()
    per_step = sorted(runs, key=lambda r: r.seconds / max(r.decode_steps, 1))
    mid = per_step[len(per_step) // 2]
    n = max(mid.decode_steps, 1)
    parts = {k: round(v / n * 1e3, 4) for k, v in sorted(mid.parts.items(), key=lambda kv: -kv[1])}
    parts["other"] = round((mid.seconds - sum(mid.parts.values())) / n * 1e3, 4)
    return {
        "variant": variant, "device": str(device), "overlap": sched.overlap is not None, "sync_parts": args["sync"],
        "ms_per_step": round(statistics.median(r.seconds / max(r.decode_steps, 1) for r in runs) * 1e3, 4),
        "ms_per_token": round(statistics.median(r.seconds / max(r.tokens, 1) for r in runs) * 1e3, 4),
        "runs_ms_per_step": [round(r.seconds / max(r.decode_steps, 1) * 1e3, 4) for r in runs],
        "host_gap_ms_per_step": round(statistics.median(r.gap / max(r.decode_steps, 1) for r in runs) * 1e3, 4),
        "host_gap_parts_ms_per_step": {k: round(v / n * 1e3, 4)
                                       for k, v in sorted(mid.gap_parts.items(), key=lambda kv: -kv[1])},
        "tokens_per_step": round(mid.tokens / n, 3), "decode_steps": mid.decode_steps,
        "syncs_per_step": round(mid.syncs / n, 2) if cuda else None,
        "transfers_per_step": round(mid.transfers / n, 2),
        "verify_graph_replays_per_step": round(mid.verify_replays / n, 2),
        "catch_up_graph_replays_per_step": round(mid.catch_up_replays / n, 2), "parts_ms_per_step": parts,
    }


def parse(argv: list[str]) -> tuple[str, dict[str, Any]]:
    flags = {"--variants": ",".join(VARIANTS), "--tokens": "300", "--reps": "3", "--steps": "3", "--accept": "3.0",
             "--ngram-draft-tokens": "4", "--profile": "0", "--json": ""}
    switches = ("--gate", "--overlap", "--sync")
    unknown = [a for a in argv if a.startswith("-") and a not in (*flags, *switches)]
    if unknown:
        help_asked = {"-h", "--help"} & set(unknown)
        raise SystemExit(__doc__ if help_asked else f"spec_host_probe: unknown option {unknown[0]}")
    values = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in flags}
    names = [a for a in argv if not a.startswith("--") and a not in values]
    opt = {f: argv[argv.index(f) + 1] if f in argv else d for f, d in flags.items()}
    variants = [v for v in opt["--variants"].split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"spec_host_probe: unknown variant {bad[0]} (known: {', '.join(VARIANTS)})")
    return (names[0] if names else "demo"), {
        "variants": variants, "tokens": int(opt["--tokens"]), "reps": int(opt["--reps"]), "steps": int(opt["--steps"]),
        "accept": float(opt["--accept"]), "ngram_draft_tokens": int(opt["--ngram-draft-tokens"]),
        "profile": int(opt["--profile"]), "json": opt["--json"], "gate": "--gate" in argv,
        "overlap": "--overlap" in argv, "sync": "--sync" in argv,
    }


def main(argv: list[str]) -> list[dict[str, Any]]:
    name, args = parse(argv)
    os.environ.setdefault("SGL_CPU_THREADS", "1")
    path = model_path(name)
    draft = write_eagle3_draft_config(path, Path(tempfile.mkdtemp(prefix="sgl-spec-probe-")) / "eagle3-draft")
    add_in_process_plugin(PLUGIN, spec_replay_plugin)
    rows: list[dict[str, Any]] = []
    try:
        for variant in args["variants"]:
            row = {"model": name, **probe_variant(path, variant, args, draft)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        remove_in_process_plugin(PLUGIN)
    if args["json"]:
        Path(args["json"]).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
