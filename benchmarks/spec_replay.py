"""Speculative decoding's machinery at a chosen acceptance: EAGLE-3's draft forwards and the target's verify forward,
with each draft accepted by a seeded draw at the chosen rate (``replay_proposer.py``), against plain decoding measured
in the same run.

python -m benchmarks.spec_replay [MODEL] [--batch 1,32,64] [--steps 3,5] [--corrupt 0,1] [--accept 3.0]
    [--new-tokens 256] [--prompt-len 128] [--ngram-draft-tokens 8] [--reps 3] [--disable-gate] [--json PATH]

MODEL is a config of ``sgl/core/model/configs`` (default llama-3.1-8b) or ``demo`` (the tiny CPU model), run with
dummy weights; the EAGLE-3 draft is a config made here (``eagle3_dummy_draft.py``), dummy too. Per batch size: the
plain decode tok/s (the engine's defaults: graphs and overlap where the platform has them) of distinct prompts; then
per draft depth (``--steps``) and rejection rate (``--corrupt``, plus the rates that give each ``--accept`` length),
the speculative tok/s and the mean acceptance length measured over that batch's verify forwards (against the expected
one), with the speculation gate on unless ``--disable-gate``. Last, NGRAM's acceptance on the
repetitive prompt of ``spec_speed.py`` at batch 1 (drafting from the request's own prompt and output only), against
plain decoding of that prompt. JSON lines as it goes, a table at the end (``--json PATH`` writes the rows).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import sgl
from benchmarks import spec_replay_plugin
from benchmarks.eagle3_dummy_draft import write_eagle3_draft_config
from benchmarks.replay_proposer import corruption_for, expected_accept_length
from benchmarks.spec_replay_plugin import ALGORITHM, PLUGIN, ReplayArgs
from benchmarks.spec_speed import PROMPT
from sgl.core.demo_model import ensure_demo_model
from sgl.core.plugins import add_in_process_plugin, remove_in_process_plugin


class Workload(NamedTuple):
    prompts: list[list[int]]
    new_tokens: int
    reps: int  # timed runs; the best is reported


def model_path(name: str) -> str:
    if name == "demo":
        return str(ensure_demo_model())
    from benchmarks.decode_speed import model_dir

    return model_dir(name)


def engine_options(batches: list[int], prompt_len: int, new_tokens: int) -> dict[str, Any]:
    """Room for the largest batch's sequences, drafts included; the radix cache's leftovers are evictable."""
    context = max(prompt_len, len(PROMPT)) + new_tokens + 64
    return {"load_format": "dummy", "context_length": context, "max_running_requests": max(batches),
            "max_total_tokens": max(batches) * context + 8192, "log_level": "warning"}


def workloads(vocab: int, batches: list[int], prompt_len: int, new_tokens: int, reps: int,
              seed: int = 0) -> dict[int, Workload]:
    """Distinct prompts per batch size, seeded."""
    rng = random.Random(seed)
    low = min(100, vocab // 4)
    return {b: Workload([[rng.randrange(low, vocab) for _ in range(prompt_len)] for _ in range(b)], new_tokens, reps)
            for b in batches}


def params(work: Workload, new_tokens: int | None = None) -> dict[str, Any]:
    return {"max_new_tokens": new_tokens or work.new_tokens, "temperature": 0.0, "ignore_eos": True}


def warm_up(engine: sgl.Engine, work: Workload) -> None:
    """One untimed run (graphs, the speculation gate's first samples)."""
    engine.generate(input_ids=work.prompts, sampling_params=params(work))


def measure(engine: sgl.Engine, work: Workload) -> float:
    """Best decode tok/s of ``work.reps`` runs, each run's prefill (timed alone, from the radix cache) taken off."""
    sp = params(work)
    best = 0.0
    for _ in range(work.reps):
        t = time.perf_counter()
        engine.generate(input_ids=work.prompts, sampling_params={**sp, "max_new_tokens": 1})
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        engine.generate(input_ids=work.prompts, sampling_params=sp)
        decode = time.perf_counter() - t - prefill
        best = max(best, len(work.prompts) * (work.new_tokens - 1) / max(decode, 1e-9))
    return best


def accept_since(before: dict[str, Any], after: dict[str, Any]) -> float:
    """Mean tokens per request per verify forward between two server infos (1.0: nothing accepted or no verify)."""
    rows = after["spec_verify_rows"] - before["spec_verify_rows"]
    accepted = after["spec_accepted_tokens"] - before["spec_accepted_tokens"]
    return round((accepted + rows) / rows, 4) if rows else 1.0


def emit(row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


class Plain(NamedTuple):
    tok_s: dict[int, float]  # per batch size
    ngram_tok_s: float  # batch 1 on the repetitive prompt


def run_plain(path: str, opts: dict[str, Any], works: dict[int, Workload], ngram: Workload,
              rows: list[dict[str, Any]], name: str) -> Plain:
    base: dict[int, float] = {}
    with sgl.Engine(model_path=path, **opts) as e:
        for b, work in works.items():
            warm_up(e, work)
            base[b] = measure(e, work)
            emit({"model": name, "batch": b, "variant": "off", "decode_tok_s": round(base[b], 1)}, rows)
        warm_up(e, ngram)
        ngram_tok_s = measure(e, ngram)
    return Plain(base, ngram_tok_s)


def run_replay(path: str, opts: dict[str, Any], works: dict[int, Workload], draft: Path, steps: int,
               corrupt: float, gate: bool, base: dict[int, float], rows: list[dict[str, Any]], name: str) -> None:
    spec: dict[str, Any] = {
        "speculative_algorithm": ALGORITHM, "speculative_draft_model_path": str(draft),
        "speculative_num_steps": steps, "speculative_eagle_topk": 1, "speculative_num_draft_tokens": steps + 1,
        "disable_speculative_gate": not gate,
        "plugin_args": {PLUGIN: ReplayArgs(corrupt=corrupt, seed=steps)},
    }
    with sgl.Engine(model_path=path, **opts, **spec) as e:
        for b, work in works.items():
            warm_up(e, work)
            before = e.get_server_info()  # NOTE: the timed runs' acceptance only
            tok_s = measure(e, work)
            after = e.get_server_info()
            emit({"model": name, "batch": b, "variant": f"replay steps={steps}", "corrupt": corrupt,
                  "decode_tok_s": round(tok_s, 1), "speedup": round(tok_s / max(base[b], 1e-9), 3),
                  "accept_length": accept_since(before, after),
                  "expected_accept_length": round(expected_accept_length(corrupt, steps), 4),
                  "gate": gate, "gate_plain_steps": after["spec_gate_plain_steps"] - before["spec_gate_plain_steps"]
                  if gate else 0, "requests": len(work.prompts)}, rows)


def run_ngram(path: str, opts: dict[str, Any], draft_tokens: int, work: Workload, base: float,
              rows: list[dict[str, Any]], name: str) -> None:
    # NOTE: no n-grams kept from recent requests: the timed runs repeat the warm-up's request, whose whole output
    # they would otherwise draft; what is measured is a request drafting from its own prompt and output
    with sgl.Engine(model_path=path, **opts, speculative_algorithm="NGRAM", speculative_num_draft_tokens=draft_tokens,
                    speculative_ngram_capacity=0) as e:
        warm_up(e, work)
        tok_s = measure(e, work)
        info = e.get_server_info()
    emit({"model": name, "batch": 1, "variant": f"NGRAM draft_tokens={draft_tokens} (repetitive prompt)",
          "decode_tok_s": round(tok_s, 1), "off_tok_s": round(base, 1), "speedup": round(tok_s / max(base, 1e-9), 3),
          "accept_length": info["avg_spec_accept_length"]}, rows)


def table(rows: list[dict[str, Any]]) -> str:
    cols = ("batch", "variant", "corrupt", "decode_tok_s", "speedup", "accept_length", "expected_accept_length",
            "gate_plain_steps")
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    lines += [" | ".join(str(r.get(c, "")) for c in cols) for r in sorted(rows, key=lambda r: r["batch"])]
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets: batch 1 at acceptance 3.0 >= 2.4x plain; batch 64 at acceptance 1.0 >= 0.97x plain."""
    out = []
    for r in rows:
        if not r["variant"].startswith("replay"):
            continue
        if r["batch"] == 1 and abs(r["expected_accept_length"] - 3.0) < 0.01:
            out.append(f"batch 1, {r['variant']}, accept {r['accept_length']}: {r['speedup']}x (target >= 2.4x)")
        if r["batch"] == 64 and r["corrupt"] == 1.0:
            out.append(f"batch 64, {r['variant']}, accept {r['accept_length']}, gate {'on' if r['gate'] else 'off'}: "
                       f"{r['speedup']}x (target >= 0.97x)")
    return out


def rates(corrupt: list[float], accept: list[float], steps: int) -> list[float]:
    return sorted(set(corrupt) | {corruption_for(a, steps) for a in accept if 1.0 <= a <= steps + 1})


def main(argv: list[str]) -> list[dict[str, Any]]:
    def opt(flag: str, default: str) -> str:
        return argv[argv.index(flag) + 1] if flag in argv else default

    flags = ("--batch", "--steps", "--corrupt", "--accept", "--new-tokens", "--prompt-len", "--ngram-draft-tokens",
             "--reps", "--json")
    unknown = [a for a in argv if a.startswith("-") and a not in (*flags, "--disable-gate")]
    if unknown:
        raise SystemExit(__doc__ if {"-h", "--help"} & set(unknown) else f"spec_replay: unknown option {unknown[0]}")
    values = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in flags}
    names = [a for a in argv if not a.startswith("--") and a not in values] or ["llama-3.1-8b"]
    batches = [int(x) for x in opt("--batch", "1,32,64").split(",")]
    steps_list = [int(x) for x in opt("--steps", "3,5").split(",")]
    corrupt = [float(x) for x in opt("--corrupt", "0,1").split(",") if x]
    accept = [float(x) for x in opt("--accept", "3.0").split(",") if x]
    new_tokens, prompt_len = int(opt("--new-tokens", "256")), int(opt("--prompt-len", "128"))
    ngram = int(opt("--ngram-draft-tokens", "8"))
    gate = "--disable-gate" not in argv
    reps = int(opt("--reps", "3"))
    opts = engine_options(batches, prompt_len, new_tokens)
    add_in_process_plugin(PLUGIN, spec_replay_plugin)
    rows: list[dict[str, Any]] = []
    try:
        for name in names:
            path = model_path(name)
            vocab = int(json.loads((Path(path) / "config.json").read_text())["vocab_size"])
            works = workloads(vocab, batches, prompt_len, new_tokens, reps)
            ngram_work = Workload([list(PROMPT)], new_tokens, reps)
            plain = run_plain(path, opts, works, ngram_work, rows, name)
            draft = write_eagle3_draft_config(path, Path(tempfile.mkdtemp(prefix="sgl-spec-replay-")) / "eagle3-draft")
            for steps in steps_list:
                for p in rates(corrupt, accept, steps):
                    run_replay(path, opts, works, draft, steps, p, gate, plain.tok_s, rows, name)
            if ngram:
                run_ngram(path, opts, ngram, ngram_work, plain.ngram_tok_s, rows, name)
            mine = [r for r in rows if r["model"] == name]
            print("\n".join([f"\n{name}", table(mine), *verdicts(mine)]), flush=True)
    finally:
        remove_in_process_plugin(PLUGIN)
    if "--json" in argv:
        Path(opt("--json", "")).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
