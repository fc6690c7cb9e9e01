"""Runs ``tests.kernels.compile_for_targets TARGET`` in a process of its own (it turns the interpreter off for the
process that imports it) and returns its JSON rows, one per kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# the PDL-aware decode-path kernels, then every other Triton kernel of sgl.kernels
KERNELS = ["rms_norm", "gated", "rotary", "store_kv", "sum_splits", "skinny_gemm", "skinny_gemm_gated_rows",
           "decode_partial", "decode_partial_fp8_kv", "decode_partial_mla", "decode_merge", "qk_norm_rope_store",
           "fp8_gemv", "fp8_skinny", "int4_gemv", "int4_skinny"]
ALL_KERNELS = [*KERNELS, "extend_attention", "extend_attention_mla", "fused_moe", "fused_moe_fp8", "lora_shrink",
               "lora_expand", "fp8_gemm", "fp8_quant", "int4_gemm", "int4_moe"]


def compiled_rows(target: str) -> list[dict[str, Any]]:
    import triton.backends

    backend = "nvidia" if target.startswith("sm") else "amd"
    if backend not in triton.backends.backends:
        pytest.skip(f"this triton has no {backend} backend to compile with")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "tests.kernels.compile_for_targets", target], cwd=root,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["kernel"] for r in rows] == ALL_KERNELS  # NOTE: for sm90 the PDL-aware ones carry the PDL fields
    return rows
