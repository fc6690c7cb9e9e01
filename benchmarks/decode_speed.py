"""Batch-1 decode speed of real architectures with dummy weights, graphs and overlap on and off (a GPU probe).

python benchmarks/decode_speed.py [qwen3-0.6b llama-3.1-8b ...] [--variant graphs+overlap] [--set KEY=VALUE ...]

``--set quantization=fp8`` (any ``sgl.Engine`` keyword, repeatable) runs every variant with that engine option;
``--set checkpoint_quant=awq`` (or gptq, fp8-block) declares the dummy checkpoint quantized in that layout.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sgl
from sgl.core.demo_model import ensure_demo_model

CONFIGS = Path(__file__).resolve().parents[1] / "sgl" / "core" / "model" / "configs"


# ``quantization_config`` of a checkpoint in each layout, so dummy weights come in that layout
CHECKPOINT_QUANT: dict[str, dict[str, object]] = {
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False},
    "fp8-block": {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                  "weight_block_size": [128, 128]},
}


def model_dir(name: str, checkpoint_quant: str | None = None) -> str:
    """A model directory of the shipped config ``name``; ``checkpoint_quant`` (a CHECKPOINT_QUANT key) declares the
    checkpoint quantized in that layout."""
    d = Path(tempfile.mkdtemp(prefix=f"sgl-{name}-"))
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    if checkpoint_quant is not None:
        config["quantization_config"] = CHECKPOINT_QUANT[checkpoint_quant]
    (d / "config.json").write_text(json.dumps(config))
    demo = ensure_demo_model()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / f, d / f)
    return str(d)


def batch1_decode_tok_s(engine: sgl.Engine, new_tokens: int = 256, **generate_kw: Any) -> float:
    """Batch-1 decode tok/s on a 128-token prompt, best of 3: the prefill (timed alone) is taken out of each run."""
    prompt = list(range(100, 228))
    sp = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
    engine.generate(input_ids=prompt, sampling_params=sp, **generate_kw)  # warm-up
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        engine.generate(input_ids=prompt, sampling_params={**sp, "max_new_tokens": 1}, **generate_kw)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        engine.generate(input_ids=prompt, sampling_params=sp, **generate_kw)
        total = time.perf_counter() - t
        best = max(best, (new_tokens - 1) / max(total - prefill, 1e-9))
    return best


def engine_overrides(argv: list[str]) -> dict[str, object]:
    """The ``--set KEY=VALUE`` pairs of ``argv`` as engine keywords (ints, floats and true/false parsed); a key
    ``PLUGIN.FIELD`` (``--set cuda.pdl=true``) is that plugin's option, gathered into ``plugin_args``."""
    out: dict[str, object] = {}
    by_plugin: dict[str, dict[str, object]] = {}
    for i, a in enumerate(argv[:-1]):
        if a == "--set":
            key, _, raw = argv[i + 1].partition("=")
            plugin, dot, field = key.partition(".")
            if dot:
                by_plugin.setdefault(plugin, {})[field.replace("-", "_")] = _literal(raw)
            else:
                out[key.replace("-", "_")] = _literal(raw)
    if by_plugin:
        from sgl.core.plugins import get_plugins

        options = get_plugins().server_args
        out["plugin_args"] = {name: options.get(name)(**kw) for name, kw in by_plugin.items()}
    return out


def _literal(raw: str) -> object:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def positional(argv: list[str], valued: tuple[str, ...] = ("--variant", "--set")) -> list[str]:
    """The arguments that are neither flags nor a valued flag's value."""
    return [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] not in valued)]


def run(name: str, new_tokens: int = 256, checkpoint_quant: str | None = None, **kw: object) -> dict[str, float]:
    path = model_dir(name, checkpoint_quant)
    t0 = time.time()
    opts = {"load_format": "dummy", "context_length": 4096, "max_total_tokens": 65536, "max_running_requests": 64,
            **kw}
    with sgl.Engine(model_path=path, **opts) as e:  # type: ignore[arg-type]
        built = time.time() - t0
        return {"build_s": round(built, 1), "decode_tok_s": round(batch1_decode_tok_s(e, new_tokens), 1)}


if __name__ == "__main__":
    argv = sys.argv[1:]
    only = argv[argv.index("--variant") + 1] if "--variant" in argv else None
    names = positional(argv) or ["qwen3-0.6b", "llama-3.1-8b"]
    extra = engine_overrides(argv)
    variants = {"graphs+overlap": {}, "graphs": {"disable_overlap_schedule": True},
                "eager": {"disable_cuda_graph": True, "disable_overlap_schedule": True}}
    if only is not None:
        variants = {only: variants[only]}
    for name in names:
        for label, kw in variants.items():
            row = {"model": name, "variant": label, **extra, **run(name, **kw, **extra)}
            print(json.dumps(row, default=str), flush=True)
