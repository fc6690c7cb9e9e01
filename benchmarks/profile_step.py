"""Where a decode step's device time goes (torch profiler), and prefill throughput against the matmul peak.

python benchmarks/profile_step.py MODEL [--host] [--prefill-only] [--set KEY=VALUE ...]   (a shipped config name,
dummy weights; ``--set`` as in decode_speed, e.g. ``--set quantization=fp8``)
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import sgl
from benchmarks.decode_speed import engine_overrides, model_dir, positional

PEAK_TFLOPS = 790.0  # bf16 matmul rate measured on this H200 (KINDS.md)


def prefill_flops(params: float, layers: int, hidden: int, lens: list[int]) -> float:
    causal = sum(n * n for n in lens) / 2
    return 2 * params * sum(lens) + 4 * layers * hidden * causal


def host_profile(engine: sgl.Engine, steps: int = 200) -> None:
    """cProfile of the scheduler's own loop (driven here, in this thread) over a batch-1 decode."""
    import cProfile
    import pstats

    from sgl.core.ipc import GenerateReq
    from sgl.core.sampling.params import SamplingParams

    sched = engine.runtime.scheduler
    engine.shutdown()  # stop its thread; the scheduler object stays usable here
    sp = SamplingParams(max_new_tokens=steps, temperature=0.0, ignore_eos=True)
    sched.add_request(GenerateReq("warm", list(range(100, 228)), sp))
    while not sched.is_idle:
        sched.step()
    sched.add_request(GenerateReq("prof", list(range(300, 428)), sp))
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    while not sched.is_idle:
        sched.step()
    prof.disable()
    dt = time.perf_counter() - t0
    print(f"host-driven decode: {steps / dt:.0f} tok/s under cProfile")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main(name: str, prefill_only: bool = False, checkpoint_quant: str | None = None, **overrides: object) -> None:
    path = model_dir(name, checkpoint_quant)
    opts: dict[str, object] = {"context_length": 8192, "max_total_tokens": 80000, "chunked_prefill_size": -1,
                               "max_prefill_tokens": 32768, "max_running_requests": 64, **overrides}
    with sgl.Engine(model_path=path, load_format="dummy", **opts) as e:  # type: ignore[arg-type]
        runner = e.runtime.scheduler.runner
        cfg = runner.model_config
        params = sum(p.numel() for p in runner.model.parameters())
        sp = {"max_new_tokens": 64, "temperature": 0, "ignore_eos": True}
        prompt = list(range(100, 228))
        e.generate(input_ids=prompt, sampling_params=sp)
        if not prefill_only:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                e.generate(input_ids=prompt, sampling_params=sp)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, 2000, (4096,), generator=g).tolist() for _ in range(8)]
        one = {"max_new_tokens": 1, "ignore_eos": True}
        e.generate(input_ids=prompts, sampling_params=one)  # warm-up (kernels compile for these shapes)
        e.flush_cache()
        times = []
        for i in range(3):
            shifted = [[(t + i + 1) % 2000 for t in p] for p in prompts]  # no cache hits
            t0 = time.perf_counter()
            e.generate(input_ids=shifted, sampling_params=one)
            times.append(time.perf_counter() - t0)
            e.flush_cache()
        t = sorted(times)[1]
        flops = prefill_flops(params, cfg.num_layers, cfg.hidden_size, [4096] * 8)
        tflops = flops / t / 1e12
        print(f"prefill 8x4096 {name} {overrides or ''}: {t * 1e3:.1f} ms median, {tflops:.0f} TFLOP/s "
              f"= {tflops / PEAK_TFLOPS:.0%} of the bf16 peak")
        if "--host" in sys.argv:
            host_profile(e)


if __name__ == "__main__":
    args = positional(sys.argv[1:])
    main(args[0] if args else "llama-3.1-8b", "--prefill-only" in sys.argv, **engine_overrides(sys.argv[1:]))
