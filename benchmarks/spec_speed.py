"""Batch-1 decode speed with and without speculative decoding, on real architectures with dummy weights.

python benchmarks/spec_speed.py [llama-3.1-8b qwen3-0.6b ...] [--algorithm NGRAM|STANDALONE] [--draft-tokens 4,8]
    [--new-tokens 256]

NGRAM: dummy weights make no sense of a prompt, but their greedy continuation soon repeats itself, which is what
NGRAM drafts from; ``--draft-tokens`` are --speculative-num-draft-tokens values. STANDALONE: the draft is the target's
own config with the same dummy weights (same seed), so every draft is accepted and the figure is the machinery's
ceiling at acceptance length K + 1; ``--draft-tokens`` are --speculative-num-steps values. The acceptance length is
printed with each figure. The baseline is measured in the same run, with graphs (the plain decode step) and without;
each speculative figure is measured with graphs (verify forwards and draft steps replayed) and without, so the
graphs' share of the speed-up shows.
"""

from __future__ import annotations

import json
import sys
import time

import sgl

from benchmarks.decode_speed import model_dir

PROMPT = list(range(100, 164)) * 2  # a repetitive prompt: NGRAM's best case


def run(path: str, new_tokens: int, **kw: object) -> dict[str, float]:
    opts = {"load_format": "dummy", "context_length": 4096, "max_total_tokens": 65536, "max_running_requests": 64,
            **kw}
    with sgl.Engine(model_path=path, **opts) as e:  # type: ignore[arg-type]
        sp = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
        e.generate(input_ids=PROMPT, sampling_params=sp)  # warm-up (and, for NGRAM, recent requests' n-grams)
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            e.generate(input_ids=PROMPT, sampling_params={**sp, "max_new_tokens": 1})
            prefill = time.perf_counter() - t
            t = time.perf_counter()
            e.generate(input_ids=PROMPT, sampling_params=sp)
            total = time.perf_counter() - t
            best = max(best, (new_tokens - 1) / max(total - prefill, 1e-9))
        info = e.get_server_info()
        return {"decode_tok_s": round(best, 1), "avg_spec_accept_length": info.get("avg_spec_accept_length", 1.0)}


if __name__ == "__main__":
    argv = sys.argv[1:]

    def opt(flag: str, default: str) -> str:
        return argv[argv.index(flag) + 1] if flag in argv else default

    algorithm = opt("--algorithm", "NGRAM")
    drafts = [int(x) for x in opt("--draft-tokens", "4,8").split(",")]
    new_tokens = int(opt("--new-tokens", "256"))
    values = {opt("--draft-tokens", ""), opt("--new-tokens", ""), opt("--algorithm", "")}
    names = [a for a in argv if not a.startswith("--") and a not in values] or ["llama-3.1-8b"]
    for name in names:
        path = model_dir(name)
        base = run(path, new_tokens)
        eager = run(path, new_tokens, disable_cuda_graph=True)
        print(json.dumps({"model": name, "variant": "off (graphs)", **base}), flush=True)
        print(json.dumps({"model": name, "variant": "off (eager)", **eager}), flush=True)
        for n in drafts:
            if algorithm == "STANDALONE":
                kw: dict[str, object] = {"speculative_draft_model_path": path, "speculative_num_steps": n}
            else:
                kw = {"speculative_num_draft_tokens": n}
            for suffix, extra in (("", {}), (" (eager)", {"disable_cuda_graph": True})):
                got = run(path, new_tokens, speculative_algorithm=algorithm, **kw, **extra)
                speedup = round(got["decode_tok_s"] / max(base["decode_tok_s"], 1e-9), 3)
                print(json.dumps({"model": name, "variant": f"{algorithm} {n}{suffix}", **got,
                                  "speedup_vs_graphs": speedup}), flush=True)
