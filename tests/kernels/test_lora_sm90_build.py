"""The SGMV kernels, compiled for sm_90 with no GPU (Triton's bundled ptxas), fit in registers: a spill here once
made prefill's rank-64 expand (software-pipelined) slow, and the interpreter cannot see it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = r'''
import os, subprocess, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sgl.kernels import lora

cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
PTRS = {"x_ptr": "*bf16", "a_ptr": "*bf16", "y_ptr": "*fp32", "b0_ptr": "*bf16", "b1_ptr": "*bf16", "b2_ptr": "*bf16",
        "out_ptr": "*bf16", "seg_start_ptr": "*i32", "seg_len_ptr": "*i32", "seg_slot_ptr": "*i32",
        "row_index_ptr": "*i32"}
ODD = {"N0", "N1", "N2", "OFF0", "OFF1", "OFF2", "NB0", "NB1", "SPLITS"}  # values a launch need not align


def usage(fn, consts):
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else PTRS.get(n, "i32") for n in names}
    # NOTE: as a launch on llama-sized tensors specializes them (16-aligned pointers, strides and sizes)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n not in consts and n not in ODD}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()},
                                 attrs=attrs), target=GPUTarget("cuda", 90, 32))
    path = "/tmp/sgl_lora_sm90_%d.cubin" % os.getpid()
    with open(path, "wb") as f:
        f.write(k.asm["cubin"])
    line = next(l for l in subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True,
                                          text=True, check=True).stdout.splitlines() if "REG:" in l)
    os.remove(path)
    return line


for r in (16, 64):
    for splits, graph in ((1, False), (16, True), (32, True)):
        print("expand", r, splits, usage(lora._expand_kernel, dict(
            SPLITS=splits, NUM_SLICES=3, BLOCK_M=lora.BLOCK_M, BLOCK_N=64, BLOCK_R=r, HAS_ROW_INDEX=graph,
            PARTIALS_IN_FLIGHT=lora.PARTIALS_IN_FLIGHT)))
for bm, graph in ((lora.LONG_BLOCK_M, False), (lora.BLOCK_M, True)):
    print("shrink", bm, usage(lora._shrink_kernel, dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=64, UPCAST=False,
                                                        PRECISION="tf32", HAS_ROW_INDEX=graph)))
'''


def test_sgmv_kernels_compile_for_sm90_without_spills(tmp_path: Path) -> None:
    import triton

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")):
        pytest.skip("this Triton has no bundled NVIDIA toolchain")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 8, run.stdout
    for line in lines:
        assert "STACK:0 " in line and "LOCAL:0 " in line, line
