"""Where a batch-1 decode step's wall time goes under the overlap loop: device busy time and the gaps between
kernels, each gap blamed on what the host was doing (a GPU probe).

python -m benchmarks.overlap_trace [MODEL] [--trace PATH]   (a shipped config name, dummy weights)

The scheduler is driven in this thread (its engine thread stopped), so the figures are the loop's own. A gap is
"host-late" when the kernel after it was launched after the previous one had finished: the device waited for the
host. The trace (chrome format) is written when --trace is given.
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import sgl
from benchmarks.decode_speed import model_dir
from sgl.core.ipc import GenerateReq
from sgl.core.sampling.params import SamplingParams

_DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


def drive(sched: object, rid: str, steps: int, start: int) -> float:
    """Decodes ``steps`` tokens of one request through the scheduler's loop; returns the decode tok/s."""
    sp = SamplingParams(max_new_tokens=steps, temperature=0.0, ignore_eos=True)
    sched.add_request(GenerateReq(rid, list(range(start, start + 128)), sp))  # type: ignore[attr-defined]
    sched.step()  # type: ignore[attr-defined]  # the prefill
    t0 = time.perf_counter()
    while not sched.is_idle:  # type: ignore[attr-defined]
        sched.step()  # type: ignore[attr-defined]
    return (steps - 1) / (time.perf_counter() - t0)


def analyse(trace: dict, top: int = 12) -> dict[str, object]:
    events = trace["traceEvents"]
    dev = sorted((e for e in events if e.get("cat") in _DEVICE_CATS and "dur" in e), key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    graph_launches = [e for e in events if e.get("cat") == "cuda_runtime" and e.get("name") == "cudaGraphLaunch"]
    span = dev[-1]["ts"] + dev[-1]["dur"] - dev[0]["ts"]
    busy = 0.0
    gaps: list[dict[str, object]] = []
    end = dev[0]["ts"]
    for e in dev:
        gap = e["ts"] - end
        if gap > 0:
            launch = launches.get(e.get("args", {}).get("correlation"))
            late = launch is not None and launch["ts"] > end
            gaps.append({"us": round(gap, 1), "next": e["name"][:60], "host_late": late,
                         "launch": launch["name"] if launch else None})
        busy += max(0.0, e["ts"] + e["dur"] - max(e["ts"], end))
        end = max(end, e["ts"] + e["dur"])
    big = [g for g in gaps if float(g["us"]) > 5]  # type: ignore[arg-type]
    by_next: Counter[str] = Counter()
    for g in big:
        by_next[f"{g['next']} (host_late={g['host_late']}, via {g['launch']})"] += float(g["us"])  # type: ignore[arg-type]
    cpu = Counter()
    for e in events:
        if e.get("cat") == "cuda_runtime" and "dur" in e:
            cpu[e["name"]] += e["dur"]
    return {
        "graph_launches": len(graph_launches),
        "device_span_us": round(span),
        "device_busy_us": round(busy),
        "busy_fraction": round(busy / span, 3),
        "gaps_over_5us": len(big),
        "gap_us_total": round(sum(float(g["us"]) for g in big)),  # type: ignore[arg-type]
        "host_late_gap_us": round(sum(float(g["us"]) for g in big if g["host_late"])),  # type: ignore[arg-type]
        "per_step_us": round(span / max(len(graph_launches), 1), 1),
        "gap_us_by_next_kernel": dict(by_next.most_common(top)),
        "runtime_calls_us": dict(cpu.most_common(top)),
        "largest_gaps": sorted(big, key=lambda g: -float(g["us"]))[:top],  # type: ignore[arg-type]
    }


def main(name: str, trace_path: str | None) -> None:
    path = model_dir(name)
    engine = sgl.Engine(model_path=path, load_format="dummy", context_length=4096, max_total_tokens=65536,
                        max_running_requests=64)
    sched = engine.runtime.scheduler
    sp = {"max_new_tokens": 256, "temperature": 0, "ignore_eos": True}
    engine.generate(input_ids=list(range(100, 228)), sampling_params=sp)
    t0 = time.perf_counter()
    engine.generate(input_ids=list(range(100, 228)), sampling_params=sp)
    thread_rate = 255 / (time.perf_counter() - t0)
    engine.shutdown()  # stop its thread; the scheduler object stays usable here
    overlap = sched.overlap
    rates = {}
    for label, loop in (("overlap", overlap), ("plain", None), ("overlap_again", overlap)):
        sched.overlap = loop
        drive(sched, f"warm-{label}", 32, 500)
        rates[label] = round(drive(sched, f"rate-{label}", 256, 700), 1)
    sched.overlap = overlap
    drive(sched, "warm", 16, 900)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=False) as prof:
        drive(sched, "traced", 64, 1100)
    out = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(out))
    trace = json.loads(out.read_text())
    if trace_path:
        with gzip.open(trace_path, "wt") as f:
            json.dump(trace, f)
    print(json.dumps({"model": name, "engine_thread_tok_s": round(thread_rate, 1), "in_thread_tok_s": rates,
                      **analyse(trace)}, indent=1))
    torch.cuda.synchronize()


if __name__ == "__main__":
    argv = sys.argv[1:]
    trace_arg = argv[argv.index("--trace") + 1] if "--trace" in argv else None
    names = [a for a in argv if not a.startswith("--") and a != trace_arg]
    main(names[0] if names else "llama-3.1-8b", trace_arg)
