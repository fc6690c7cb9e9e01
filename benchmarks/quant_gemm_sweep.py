"""Decode GEMMs of Llama-3.1-8B with quantized weights: bf16 skinny, the old fp8 decode path (activations quantized
in torch, then sgl.kernels.fp8_gemm), the fp8 weight-streaming kernel (sgl.kernels.fp8_skinny_gemm), the general
int4 kernel and the int4 weight-streaming kernel (sgl.kernels.int4_skinny_gemm), over their tiles (a GPU probe).

python -m benchmarks.quant_gemm_sweep [--m 1 4] [--only fp8-token fp8-block int4-awq int4-gptq] [--quick | --small]

Each timing replays a CUDA graph of 10 calls (sgl's decode runs in graphs), so launch gaps are not counted; GB/s is
the weight's bytes (fp8: one a weight, int4: half, bf16: two) over the time. fp8 rows also time the default tile
with both operands widened to fp16 (``default_fp16_dot_us``) against fp8 tensor cores. Every config is checked against the
torch reference first. Prints one JSON line per (family, shape, M): the baselines, the default config, the best of
the sweep; then per (family, M) the four projections' sum (one layer) and, last, the best tiles as Python to paste
into the kernels' config functions. ``--quick``: default configs only (no sweep); ``--small``: a grid of a few
dozen tiles around the defaults (minutes, not tens of). At M = 1 every tile is timed with the one-row GEMV kernel too
(``gemv=True``).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from triton.runtime.errors import OutOfResources

from benchmarks.skinny_gemm_sweep import graph_us
from sgl.kernels.fp8_gemm import fp8_gemm
from sgl.kernels.fp8_skinny_gemm import (
    ActQuant,
    DotKind,
    Fp8SkinnyConfig,
    fp8_skinny_config,
    fp8_skinny_gemm,
    max_block_k,
)
from sgl.kernels.int4_gemm import int4_gemm
from sgl.kernels.int4_skinny_gemm import Int4SkinnyConfig, int4_skinny_config, int4_skinny_gemm
from sgl.kernels.skinny_gemm import skinny_gemm
from sgl.plugins.quant import fp8_math as fm
from sgl.plugins.quant.int4_linear import Int4LinearMethod, Int4Scheme

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}  # (N, K)
FAMILIES = ("fp8-token", "fp8-block", "int4-awq", "int4-gptq")
LAYERS = 32
DEV = torch.device("cuda")


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def _sweep(configs: list[Any], run: Callable[[Any], torch.Tensor], ref: torch.Tensor, k: int) -> dict[Any, float]:
    times = {}
    for cfg in configs:
        if cfg in times or k // cfg.split_k < cfg.block_k:
            continue
        try:
            out = run(cfg)
        except (ValueError, OutOfResources):
            continue  # a tile the scale groups do not allow, or one that does not fit the device
        except Exception as exc:  # noqa: BLE001 - a tile that does not compile is reported, the sweep goes on
            print(json.dumps({"failed": repr(cfg), "error": repr(exc)[:300]}), flush=True)
            continue
        if _rel(out, ref) >= 1e-2:  # NOTE: reported and left out, so one wrong variant does not end the sweep
            print(json.dumps({"wrong": repr(cfg), "rel_err": _rel(out, ref)}), flush=True)
            continue
        times[cfg] = graph_us(lambda cfg=cfg: run(cfg))
    return times


def _with_gemv(grid: list[Any], m: int) -> list[Any]:
    """At one row, each tile with the one-row GEMV kernel too (the field is ignored for more rows)."""
    return grid + [cfg._replace(gemv=True) for cfg in grid if not cfg.gemv] if m == 1 else grid


def _fp8_case(family: str, n: int, k: int, m: int, grid_size: str) -> tuple[dict[str, float], Any, dict[Any, float]]:
    dense = torch.randn(n, k, device=DEV) * 0.02
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    if family == "fp8-block":
        w, ws = fm.quantize_blocks(dense, (128, 128))
        group, act, act_group = (128, 128), ActQuant.GROUP, 128
        w_ref = w.float() * fm.expand_blocks(ws, n, k, (128, 128))
    else:
        w, ws = fm.quantize_per_row(dense)
        group, act, act_group = (1, k), ActQuant.TOKEN, k
        w_ref = w.float() * ws
    ref = fm.fake_quantize_per_token_group(x, act_group) @ w_ref.T

    def old() -> torch.Tensor:  # what TritonFp8LinearMethod ran at decode before fp8_skinny_gemm
        a, sa = fm.quantize_per_token_group(x, act_group)
        return fp8_gemm(a, w, ws, group, sa, min(act_group, k), out_dtype=torch.bfloat16)

    assert _rel(old(), ref) < 1e-2
    limit = max_block_k(k, group[1], act, act_group)
    assert limit is not None
    default = fp8_skinny_config(n, k, limit, DEV)
    grid = [default]
    if grid_size == "small":
        grid += [Fp8SkinnyConfig(*c) for c in itertools.product((32, 64, 128), (256, 512), (1, 2, 4), (4, 8), (4,))]
    elif grid_size == "full":
        grid += [Fp8SkinnyConfig(*c) for c in itertools.product(
            (16, 32, 64, 128), (128, 256, 512), (1, 2, 4, 8), (4, 8), (3, 4))]
    grid = _with_gemv(grid, m)
    times = _sweep(grid, lambda cfg: fp8_skinny_gemm(x, w, ws, group, act, act_group, config=cfg),
                   ref, k)
    fp16 = graph_us(lambda: fp8_skinny_gemm(x, w, ws, group, act, act_group, dot=DotKind.FP16, config=default))
    return {"fp8_old_us": graph_us(old), "default_fp16_dot_us": fp16}, default, times


def _int4_case(family: str, n: int, k: int, m: int, grid_size: str) -> tuple[dict[str, float], Any, dict[Any, float]]:
    awq = family == "int4-awq"
    qweight = torch.randint(-2**31, 2**31 - 1, (k, n // 8) if awq else (k // 8, n), device=DEV, dtype=torch.int32)
    qzeros = torch.randint(-2**31, 2**31 - 1, (k // 128, n // 8), device=DEV, dtype=torch.int32)
    scales = (torch.rand(k // 128, n, device=DEV) * 0.004 + 0.001).half()
    zero_offset = 0 if awq else 1
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    scheme = Int4Scheme("awq" if awq else "gptq", 128, False, zero_offset)
    holder = nn.Module()
    holder.qweight, holder.qzeros, holder.scales = qweight, qzeros, scales  # type: ignore[assignment]
    holder.int4_group = 128  # type: ignore[assignment]
    ref = x.float() @ Int4LinearMethod(scheme).dequantized_weight(holder).T

    def old() -> torch.Tensor:
        return int4_gemm(x, qweight, qzeros, scales, 128, awq, zero_offset)

    assert _rel(old(), ref) < 1e-2
    default = int4_skinny_config(n, k, 128, DEV)
    grid = [default]
    if grid_size == "small":
        grid += [Int4SkinnyConfig(*c) for c in itertools.product((64, 128, 256), (128,), (2, 4, 8, 16), (4, 8), (3,))]
    elif grid_size == "full":
        grid += [Int4SkinnyConfig(*c) for c in itertools.product(
            (32, 64, 128, 256), (64, 128), (1, 2, 4, 8, 16), (4, 8), (3, 4))]
    grid = _with_gemv(grid, m)
    times = _sweep(grid, lambda cfg: int4_skinny_gemm(x, qweight, qzeros, scales, 128, awq, zero_offset,
                                                      config=cfg), ref, k)
    return {"int4_old_us": graph_us(old)}, default, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--only", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="default configs only")
    size.add_argument("--small", action="store_true", help="a few dozen tiles around the defaults")
    args = parser.parse_args()
    grid_size = "quick" if args.quick else "small" if args.small else "full"
    best_tiles: dict[str, dict[tuple[int, int, int], Any]] = {}
    for family in args.only:
        bytes_per_weight = 1.0 if family.startswith("fp8") else 0.5
        for m in args.m:
            layer = {"bf16_skinny_us": 0.0, "old_us": 0.0, "default_us": 0.0, "best_us": 0.0}
            for name, (n, k) in SHAPES.items():
                torch.manual_seed(0)
                dense = torch.randn(n, k, device=DEV, dtype=torch.bfloat16)
                xb = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
                bf16_us = graph_us(lambda dense=dense, xb=xb: skinny_gemm(xb, dense))
                del dense
                case = _fp8_case if family.startswith("fp8") else _int4_case
                baseline, default, times = case(family, n, k, m, grid_size)
                best = min(times, key=times.__getitem__)
                best_tiles.setdefault(family, {})[(n, k, m)] = best
                gb = n * k * bytes_per_weight / 1e3
                old_us = baseline.get("fp8_old_us", baseline.get("int4_old_us", 0.0))
                row = {
                    "family": family, "shape": name, "n": n, "k": k, "m": m,
                    "bf16_skinny_us": round(bf16_us, 2), "bf16_skinny_gb_s": round(n * k * 2 / 1e3 / bf16_us),
                    **{key: round(v, 2) for key, v in baseline.items()}, "old_gb_s": round(gb / old_us),
                    "default": list(default), "default_us": round(times[default], 2),
                    "default_gb_s": round(gb / times[default]),
                    "best": list(best), "best_us": round(times[best], 2), "best_gb_s": round(gb / times[best]),
                    "best_vs_bf16": round(bf16_us / times[best], 3), "best_vs_old": round(old_us / times[best], 3),
                }
                print(json.dumps(row), flush=True)
                for key, v in (("bf16_skinny_us", bf16_us), ("old_us", old_us), ("default_us", times[default]),
                               ("best_us", times[best])):
                    layer[key] += v
            print(json.dumps({"family": family, "m": m, "one_layer": {k: round(v, 1) for k, v in layer.items()},
                              f"{LAYERS}_layers_ms": {k: round(v * LAYERS / 1e3, 3) for k, v in layer.items()}}),
                  flush=True)
    print("# best tiles (n, k, m) -> config, from this sweep:")
    for family, tiles in best_tiles.items():
        print(f"{family.upper().replace('-', '_')}_TILES = {{")
        for nkm, cfg in tiles.items():
            print(f"    {nkm}: {type(cfg).__name__}{tuple(cfg)},")
        print("}")


if __name__ == "__main__":
    main()
