"""Batch-1 decode with the host slowed on purpose: is the decode bound by the device or by the host? (a GPU probe)

python -m benchmarks.host_bound [MODEL ...] [--steps 1,4,8] [--tokens 256] [--set KEY=VALUE ...]
(shipped config names, dummy weights; ``--set`` passes any ``sgl.Engine`` keyword, e.g. enable_layer_fusion=true)

For each --num-continuous-decode-steps K it prints one JSON line per model with the batch-1 decode tok/s (median of
3 runs) on a quiet host and on a slowed one, and the device-busy fraction of a profiled decode span. "Slowed": the
whole process (the scheduler thread included) is pinned to one core, and a busy-looping process is pinned to the
same core, so the scheduler gets about half of one core.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import sgl
from benchmarks.decode_speed import engine_overrides, model_dir, positional
from benchmarks.overlap_trace import analyse


def _spin(core: int) -> None:
    os.sched_setaffinity(0, {core})
    while True:
        pass


class SlowHost:
    """Pins this process to one core and a competing busy loop to the same core, for the ``with`` block."""

    def __enter__(self) -> SlowHost:
        self.before = os.sched_getaffinity(0)
        self.core = min(self.before)
        os.sched_setaffinity(0, {self.core})
        self.proc = mp.get_context("spawn").Process(target=_spin, args=(self.core,), daemon=True)
        self.proc.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.join()
        os.sched_setaffinity(0, self.before)


def decode_rate(engine: sgl.Engine, tokens: int, start: int) -> float:
    sp = {"max_new_tokens": 1, "temperature": 0, "ignore_eos": True}
    prompt = list(range(start, start + 128))
    t0 = time.perf_counter()
    engine.generate(input_ids=prompt, sampling_params=sp)
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.generate(input_ids=prompt, sampling_params={**sp, "max_new_tokens": tokens})
    return (tokens - 1) / (time.perf_counter() - t0 - ttft)


def busy_fraction(engine: sgl.Engine, tokens: int) -> float:
    sp = {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.generate(input_ids=list(range(900, 1028)), sampling_params=sp)
        torch.cuda.synchronize()
    out = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(out))
    return float(analyse(json.loads(out.read_text()))["busy_fraction"])  # type: ignore[arg-type]


def main(names: list[str], steps: list[int], tokens: int, extra: dict[str, object]) -> None:
    for name in names:
        path = model_dir(name)
        for k in steps:
            with sgl.Engine(model_path=path, load_format="dummy", context_length=4096, max_total_tokens=65536,
                            max_running_requests=64, num_continuous_decode_steps=k, **extra) as e:  # type: ignore[arg-type]
                decode_rate(e, 32, 100)  # warm-up
                quiet = [decode_rate(e, tokens, 200 + 10 * i) for i in range(3)]
                with SlowHost():
                    decode_rate(e, 32, 300)
                    slowed = [decode_rate(e, tokens, 400 + 10 * i) for i in range(3)]
                busy = busy_fraction(e, tokens)
            print(json.dumps({
                "model": name, "num_continuous_decode_steps": k, **extra, "tok_s": round(statistics.median(quiet), 1),
                "tok_s_slowed_host": round(statistics.median(slowed), 1), "runs": [round(x, 1) for x in quiet],
                "runs_slowed": [round(x, 1) for x in slowed], "device_busy": busy,
            }, default=str), flush=True)


if __name__ == "__main__":
    argv = sys.argv[1:]
    ks = [int(x) for x in argv[argv.index("--steps") + 1].split(",")] if "--steps" in argv else [1, 4, 8]
    n = int(argv[argv.index("--tokens") + 1]) if "--tokens" in argv else 256
    models = positional(argv, ("--steps", "--tokens", "--set"))
    main(models or ["qwen3-0.6b", "llama-3.1-8b"], ks, n, engine_overrides(argv))
