"""``sgl bench serving --compare-offline``: the offline Engine, then a launched server, on one workload in one run.

Why: the server's cost over the engine (request front over IPC, per-token streaming, SSE, the client) is only
visible when both run the same requests on the same machine back to back; a ratio from two runs on two leases
measures the lease. Both sides are warmed the same way (a short request, a batch shaped like the workload, a cache
flush) and the server's run records the CPU seconds of the bench client, the API process and the scheduler.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from sgl.bench.cpu_time import CpuMeter, CpuSplit, children
from sgl.bench.offline import SCHEDULER_COUNTERS, WARMUP_BATCH, WARMUP_PROMPT_LEN, OfflineResult, run_offline
from sgl.bench.report import format_table
from sgl.bench.serving import ServingResult, run_serving
from sgl.bench.workloads import BenchRequest, WorkloadSpec
from sgl.core.config import ServerArgs


@dataclass(frozen=True)
class OfflineComparison:
    offline: OfflineResult
    serving: ServingResult
    serving_cpu: CpuSplit
    # the server's scheduler counters over its run, as the offline result's ``scheduler``: the same steps and rows
    # on both sides point a lower ratio at host time per step; more (smaller) steps point at how requests arrived
    serving_scheduler: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Server output tok/s over the offline engine's (issue 23's target: >= 0.97)."""
        return self.serving.output_throughput / self.offline.output_throughput

    def as_dict(self) -> dict[str, Any]:
        return {"offline": self.offline.as_dict(), "serving": self.serving.as_dict(), "ratio": self.ratio,
                "serving_cpu_s": dict(self.serving_cpu.seconds),
                "serving_cpu_us_per_token": self.serving_cpu.us_per_token(),
                "serving_scheduler": dict(self.serving_scheduler)}

    def format(self) -> str:
        off, srv = self.offline, self.serving
        rows: list[tuple[str, Any, Any]] = [
            ("Successful requests:", off.num_requests, srv.completed),
            ("Output tokens:", off.output_tokens, srv.output_tokens),
            ("Duration (s):", off.duration_s, srv.duration_s),
            ("Output token throughput (tok/s):", off.output_throughput, srv.output_throughput),
        ]
        for k, v in self.serving_scheduler.items():
            rows.append((f"Scheduler {k.replace('_', ' ')}:", off.scheduler.get(k, "-"), v))
        offline_cpu = off.cpu_s * 1e6 / max(off.output_tokens, 1) if off.cpu_s is not None else None
        rows.append(("CPU per output token, engine process (us):", offline_cpu, "-"))
        for role, us in self.serving_cpu.us_per_token().items():
            rows.append((f"CPU per output token, {role} (us):", "-", us))
        table = format_table(["", "offline engine", "server"], rows)
        return f"{table}\nServer / offline output throughput: {self.ratio:.3f}"


def warm_up(base_url: str, reqs: list[BenchRequest], vocab: int, api_key: str | None = None,
            timeout: float = 600.0) -> None:
    """The server's twin of the offline bench's warm-up: the same requests, then a cache flush."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    sp = {"max_new_tokens": 2, "ignore_eos": True, "temperature": 0.0}
    prompts = [[i % vocab for i in range(WARMUP_PROMPT_LEN)]]
    shaped = [[(t + 1) % vocab for t in r.input_ids] for r in reqs[:WARMUP_BATCH]]
    with httpx.Client(base_url=base_url, timeout=timeout, trust_env=False, headers=headers) as client:
        for body in ({"input_ids": prompts[0], "sampling_params": sp},
                     *(({"input_ids": shaped, "sampling_params": sp},) if shaped else ())):
            client.post("/generate", json=body).raise_for_status()
        client.post("/flush_cache").raise_for_status()


def scheduler_counters(base_url: str, api_key: str | None = None, timeout: float = 30.0) -> dict[str, float]:
    """The server's SCHEDULER_COUNTERS now (from /get_server_info); empty when it does not report them."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    info = httpx.get(base_url.rstrip("/") + "/get_server_info", timeout=timeout, trust_env=False,
                     headers=headers).json()
    return {k: info[k] for k in SCHEDULER_COUNTERS if isinstance(info.get(k), (int, float))}


def compare_offline(
    args: ServerArgs, spec: WorkloadSpec, vocab: int, api: str = "sgl", launch_timeout: float = 300.0,
    progress: bool = True,
) -> OfflineComparison:
    """Runs the offline Engine (which it shuts down), then ``sgl serve`` with the same args at request rate inf."""
    from sgl.bench.launch import launched_process
    from sgl.bench.serving import discover_model

    offline = run_offline(args, spec, "offline engine", progress)
    reqs = spec.build(vocab)
    with launched_process(args, launch_timeout) as (url, proc):
        warm_up(url, reqs, vocab, args.api_key)
        model = discover_model(url, args.api_key) if api == "openai" else None
        before = scheduler_counters(url, args.api_key)
        meter = CpuMeter({"bench client": [os.getpid()], "API process": [proc.pid],
                          "scheduler": children(proc.pid)})
        serving = run_serving(url, reqs, api, model=model, seed=spec.seed, progress=progress, api_key=args.api_key)
        cpu = meter.stop(serving.output_tokens)
        after = scheduler_counters(url, args.api_key)
    if serving.failed or serving.input_tokens != offline.input_tokens:
        raise RuntimeError(f"the server's run is not the offline run's workload: {serving.failed} failed, "
                           f"{serving.input_tokens} vs {offline.input_tokens} prompt tokens; {list(serving.errors)}")
    counters = {k: after[k] - before[k] for k in after if k in before}
    return OfflineComparison(offline, serving, cpu, counters)
