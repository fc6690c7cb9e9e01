"""Where a large decode batch's time goes: step time against the bandwidth bound, and the kernel table.

python -m benchmarks.big_decode MODEL BATCH CONTEXT [--cuda-graph-max-bs N] [--eager] [--kv-cache-dtype fp8_e4m3]

Admits BATCH requests of CONTEXT prompt tokens (chunked prefill, not timed), then times decode steps of the
whole batch through the scheduler's own step(), each bracketed by a synchronize, and profiles three of them.
The bound is the bytes one step must read (weights + every request's KV) at the measured 4.27 TB/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import sgl
from benchmarks.decode_speed import model_dir
from sgl.core.ipc import GenerateReq
from sgl.core.sampling.params import SamplingParams

BANDWIDTH = 4.27e12  # bytes/s measured on this H200 (KINDS.md)


def main(name: str, batch: int, context: int, graph_max_bs: int, eager: bool, kv_cache_dtype: str) -> None:
    path = model_dir(name)
    tokens = batch * (context + 80) + 8192
    with sgl.Engine(model_path=path, load_format="dummy", context_length=context + 256, max_total_tokens=tokens,
                    max_running_requests=batch, cuda_graph_max_bs=graph_max_bs, disable_cuda_graph=eager,
                    disable_overlap_schedule=True, kv_cache_dtype=kv_cache_dtype) as e:
        sched = e.runtime.scheduler
        e.shutdown()  # stop its thread; the scheduler object stays usable here
        runner = sched.runner
        sp = SamplingParams(max_new_tokens=64, temperature=0.0, ignore_eos=True)
        g = torch.Generator().manual_seed(0)
        for i in range(batch):
            ids = torch.randint(100, 2000, (context,), generator=g).tolist()
            sched.add_request(GenerateReq(f"big-{i}", ids, sp))
        while sched.waiting or sched.chunked is not None or len(sched.running) < batch:
            sched.step()
        sync = runner.platform.synchronize
        times = []
        for _ in range(12):
            sync()
            t0 = time.perf_counter()
            sched.step()
            sync()
            times.append(time.perf_counter() - t0)
        with profile(activities=[ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                sched.step()
            sync()
        step = statistics.median(times[2:])
        weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
        pool = runner.kv_pool
        kv_per_token = pool.bytes_per_token(pool.num_layers, pool.num_kv_heads, pool.head_dim, pool.dtype)
        kv = batch * (context + 20) * kv_per_token
        bound = (weights + kv) / BANDWIDTH
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=16, max_name_column_width=60))
        print(json.dumps({"model": name, "batch": batch, "context": context, "eager": eager,
                          "graph_max_bs": graph_max_bs, "kv_cache_dtype": kv_cache_dtype, "step_ms": round(step * 1e3, 2),
                          "bound_ms": round(bound * 1e3, 2), "of_bound": round(bound / step, 3),
                          "tok_s": round(batch / step)}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("batch", type=int)
    p.add_argument("context", type=int)
    p.add_argument("--cuda-graph-max-bs", type=int, default=256)
    p.add_argument("--eager", action="store_true")
    p.add_argument("--kv-cache-dtype", default="auto")
    a = p.parse_args()
    main(a.model, a.batch, a.context, a.cuda_graph_max_bs, a.eager, a.kv_cache_dtype)
