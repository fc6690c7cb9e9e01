"""Compiles the decode-path kernels ahead of time for a GPU this machine does not have (Triton's own toolchains: no
GPU needed), one JSON line per kernel.

``python -m tests.kernels.compile_for_targets sm90``: NVIDIA Hopper; per PDL-aware kernel whether its PTX waits for
the previous grid (``griddepcontrol.wait``) before its first global memory access, and for every kernel its register
spills (stack and local bytes, from the bundled cuobjdump) in the tiles its wrapper picks.
``python -m tests.kernels.compile_for_targets gfx942`` (or ``gfx950``, ``sm100``): AMD MI300 / MI350 or NVIDIA
Blackwell, plain launches, FP8 in the platform's FP8 (``e4m3fnuz`` on gfx942); per kernel, whether it compiles to a
code object.

Run as a script: the kernels must be decorated for compiling, not for the interpreter that the test process uses
(importing this module turns the interpreter off for its process).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

from sgl.kernels import (
    activation,
    decode_attn,
    extend_attn,
    fp8_gemm,
    fp8_quant,
    fp8_skinny_gemm,
    fused_moe_int4,
    int4_gemm,
    int4_skinny_gemm,
    kv_store,
    lora,
    norm,
    qk_rope_store,
    rotary,
    skinny_gemm,
)
from sgl.kernels.fused_moe import _grouped_gemm_kernel

_POINTERS = {"g_ptr": "*i32", "seg_start_ptr": "*i32", "seg_len_ptr": "*i32", "seg_slot_ptr": "*i32", "row_index_ptr": "*i32",
             "prefix_lens_ptr": "*i64", "extend_lens_ptr": "*i64", "extend_start_ptr": "*i64", "tree_ptr": "*i8",
             "tree_off_ptr": "*i64", "weight_ptr": "*fp32", "pairs_ptr": "*i32", "experts_ptr": "*i32",
             "total_ptr": "*i32", "sa_ptr": "*fp32", "sb_ptr": "*fp32", "ws_ptr": "*fp32", "xs_ptr": "*fp32", "qw_ptr": "*i32", "qz_ptr": "*i32", "pos_ptr": "*i64", "loc_ptr": "*i64", "req_idx_ptr": "*i64", "seq_lens_ptr": "*i64", "r2t_ptr": "*i32",
             "splits_ptr": "*i32", "tickets_ptr": "*i32", "po_ptr": "*fp32", "plse_ptr": "*fp32", "part_ptr": "*fp32",
             "cache_ptr": "*fp32"}
_FLOATS = {"eps", "scale_log2", "kv_max"}
# integer arguments whose values at real shapes are not multiples of 16 (a launch marks the others "divisible by
# 16", as tensors' 16-byte-aligned pointers: that is what lets the compiler vectorise their loads)
_UNALIGNED = {"M", "group", "n_kv_heads", "zero_offset", "num_pairs", "N0", "N1", "N2", "OFF0", "OFF1", "OFF2",
              "NB0", "NB1", "SPLITS", "R"}

_CPU = torch.device("cpu")
_GATED = skinny_gemm.skinny_config(4096, 14336, _CPU)
# prefill tiles as the wrappers pick them (Llama-3.1-8B's o_proj, 8 x 512 tokens; block-FP8's 128-wide groups)
_FP8_PREFILL = fp8_gemm.fp8_gemm_config(4096, 4096, 4096, 128, _CPU)
_INT4_PREFILL = int4_gemm.int4_gemm_config(4096, 4096, 4096, _CPU)
_EXTEND = extend_attn.extend_config(128, torch.device("cuda"))  # (BLOCK_M, BLOCK_N, num_warps) on a GPU
_EXTEND_MLA = extend_attn.extend_config(576, torch.device("cuda"))  # MLA's latent

# a decode-shaped specialisation of each (Llama-3.1-8B's heads, one row, K split in 4)
KERNELS = {
    "rms_norm": (norm._rms_norm_kernel, {"HAS_RESIDUAL": True, "BLOCK": 4096}),
    "gated": (activation._gated_kernel, {"GELU_TANH": False, "BLOCK": 1024}),
    "rotary": (rotary._rotary_kernel, {"IS_NEOX": True, "BLOCK_HQ": 32, "BLOCK_HK": 8, "BLOCK_HALF": 64,
                                       "BLOCK_PASS": 0}),
    "store_kv": (kv_store._store_kv_kernel, {"BLOCK_K": 1024, "BLOCK_V": 1024, "SATURATE": False}),
    "sum_splits": (skinny_gemm._sum_splits_kernel, {"SPLIT_K": 4, "BLOCK": 1024, "HAS_BIAS": False}),
    "skinny_gemm": (skinny_gemm._skinny_gemm_kernel, {
        "BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "UPCAST": False, "HAS_BIAS": False, "GATED": True,
        "GELU_TANH": False, "SPLIT_K": 4, "REDUCE": True, "REDUCE_BIAS": False, "ONE_ROW": True}),
    # the gated GEMM over several rows, in the tiles skinny_gemm picks (Llama-3.1-8B's down projection)
    "skinny_gemm_gated_rows": (skinny_gemm._skinny_gemm_kernel, {
        "BLOCK_M": 16, "BLOCK_N": _GATED.block_n, "BLOCK_K": _GATED.block_k, "UPCAST": False, "HAS_BIAS": False,
        "GATED": True, "GELU_TANH": False, "SPLIT_K": 4, "REDUCE": True, "REDUCE_BIAS": False, "ONE_ROW": False}),
    "decode_partial": (decode_attn._decode_partial_kernel, {
        "BLOCK_H": 16, "BLOCK_N": 64, "BLOCK_D": 128, "BLOCK_DV": 128, "UPCAST": False, "PRECISION": None,
        "KV_FP16": False, "MERGE": True, "MAX_SPLITS": 16, "BLOCK_S": 16}),
    # an FP8 KV cache's tile (one warp) and MLA's 576-wide latent, as decode_attention picks them
    "decode_partial_fp8_kv": (decode_attn._decode_partial_kernel, {
        "BLOCK_H": 16, "BLOCK_N": 32, "BLOCK_D": 128, "BLOCK_DV": 128, "UPCAST": False, "PRECISION": None,
        "KV_FP16": True, "MERGE": False, "MAX_SPLITS": 16, "BLOCK_S": 16}),
    "decode_partial_mla": (decode_attn._decode_partial_kernel, {
        "BLOCK_H": 16, "BLOCK_N": 16, "BLOCK_D": 1024, "BLOCK_DV": 512, "UPCAST": False, "PRECISION": None,
        "KV_FP16": False, "MERGE": False, "MAX_SPLITS": 16, "BLOCK_S": 16}),
    "decode_merge": (decode_attn._decode_merge_kernel, {"BLOCK_S": 16, "BLOCK_DV": 128}),
    "qk_norm_rope_store": (qk_rope_store._qk_norm_rope_store_kernel, {
        "HAS_NORM": True, "IS_NEOX": True, "SATURATE": False, "BLOCK_D": 128, "BLOCK_HALF": 64, "BLOCK_PASS": 0}),
    "fp8_gemv": (fp8_skinny_gemm._fp8_gemv_kernel, {
        "BLOCK_N": 32, "BLOCK_K": 256, "ACT": 1, "W_BLOCKED": False, "FP8_MAX": 448.0, "FP8_MIN_NORMAL": 2.0**-6,
        "INTERPRETED": False, "HAS_BIAS": False}),
    "fp8_skinny": (fp8_skinny_gemm._fp8_skinny_kernel, {
        "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256, "ACT": 1, "DOT": 0, "W_BLOCKED": False, "FP8_MAX": 448.0,
        "FP8_MIN_NORMAL": 2.0**-6, "X_ROWS": 16, "HAS_BIAS": False, "IMPRECISE_ACC": 32}),
    "int4_gemv": (int4_skinny_gemm._int4_gemv_kernel, {"AWQ": True, "BLOCK_N": 64, "BLOCK_K": 128, "HAS_BIAS": False}),
    "int4_skinny": (int4_skinny_gemm._int4_skinny_kernel, {
        "AWQ": True, "BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "MAGIC_FP16": False, "MAGIC_BITS": 0x4300,
        "MAGIC_BASE": 128.0, "UPCAST": False, "HAS_BIAS": False}),
}
_FP8_POINTERS = {"decode_partial_fp8_kv": {"k_ptr", "v_ptr"}, "fp8_gemv": {"w_ptr"}, "fp8_skinny": {"w_ptr"}, "fp8_gemm": {"a_ptr", "b_ptr"},
                  "fp8_quant": {"q_ptr"}, "fused_moe_fp8": {"a_ptr", "b_ptr"}}

# launch options where the wrappers pick others than num_warps=4, num_stages=3
_OPTIONS = {"fp8_gemv": {"num_stages": 4}, "fp8_skinny": {"num_stages": 4}, "int4_skinny": {"num_stages": 4},
            "decode_partial": {"num_stages": 2}, "decode_partial_fp8_kv": {"num_warps": 1, "num_stages": 3},
            "decode_partial_mla": {"num_stages": 1}, "extend_attention": {"num_warps": _EXTEND[2], "num_stages": 2},
            "extend_attention_mla": {"num_warps": _EXTEND_MLA[2], "num_stages": 2},
            "fp8_gemm": {"num_warps": _FP8_PREFILL.num_warps, "num_stages": _FP8_PREFILL.num_stages},
            "int4_gemm": {"num_warps": _INT4_PREFILL.num_warps, "num_stages": _INT4_PREFILL.num_stages}}

# kernels that launch as usual (no USE_PDL): compiled for the AMD targets only
PLAIN_KERNELS = {
    "extend_attention": (extend_attn._extend_kernel, {
        "BLOCK_M": _EXTEND[0], "BLOCK_N": _EXTEND[1], "BLOCK_D": 128, "BLOCK_DV": 128, "UPCAST": False,
        "PRECISION": None, "HAS_TREE": False}),
    "extend_attention_mla": (extend_attn._extend_kernel, {
        "BLOCK_M": _EXTEND_MLA[0], "BLOCK_N": _EXTEND_MLA[1], "BLOCK_D": 1024, "BLOCK_DV": 512, "UPCAST": False,
        "PRECISION": None, "HAS_TREE": False}),
    "fused_moe": (_grouped_gemm_kernel, {
        "A_ROWS_PER_PAIR": 8, "MUL_WEIGHT": False, "UPCAST": False, "PRECISION": None, "SCALED": False,
        "DOT_FP16": False, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}),
    "fused_moe_fp8": (_grouped_gemm_kernel, {
        "A_ROWS_PER_PAIR": 8, "MUL_WEIGHT": False, "UPCAST": False, "PRECISION": None, "SCALED": True,
        "DOT_FP16": False, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128}),
    "lora_shrink": (lora._shrink_kernel, {
        "BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 256, "UPCAST": False, "PRECISION": None, "HAS_ROW_INDEX": True}),
    "lora_expand": (lora._expand_kernel, {
        "SPLITS": 4, "NUM_SLICES": 3, "BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_R": 16, "HAS_ROW_INDEX": True,
        "PARTIALS_IN_FLIGHT": 4}),
    "fp8_gemm": (fp8_gemm._fp8_gemm_kernel, {
        "BLOCK_M": _FP8_PREFILL.block_m, "BLOCK_N": _FP8_PREFILL.block_n, "BLOCK_K": _FP8_PREFILL.block_k,
        "HAS_A_SCALE": True, "DOT_FP32": False, "DOT_FP16": False, "HAS_BIAS": False, "GROUP_M": 8}),
    "fp8_quant": (fp8_quant._fp8_quant_kernel, {"CHUNK": 128, "FP8_MAX": 448.0, "FP8_MIN_NORMAL": 2.0**-6,
                                                "EXACT_CAST": False}),
    "int4_gemm": (int4_gemm._int4_gemm_kernel, {
        "AWQ": True, "HAS_G_IDX": False, "BLOCK_M": _INT4_PREFILL.block_m, "BLOCK_N": _INT4_PREFILL.block_n,
        "BLOCK_K": _INT4_PREFILL.block_k, "UPCAST": False, "HAS_BIAS": False}),
    "int4_moe": (fused_moe_int4._grouped_int4_kernel, {
        "A_ROWS_PER_PAIR": 8, "MUL_WEIGHT": False, "AWQ": True, "HAS_G_IDX": False, "UPCAST": False,
        "PRECISION": None, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128}),
}
# fp32 buffers: LoRA's shrink partials, the GEMMs' split partials, the FP8 activation scales
_FP32_POINTERS = {"lora_shrink": {"y_ptr"}, "lora_expand": {"y_ptr"}, "fp8_gemm": {"out_ptr"},
                  "int4_gemm": {"out_ptr"}, "fp8_quant": {"s_ptr"}}

_GLOBAL = re.compile(r"^\s*(@!?%p\d+\s+)?(ld\.global|st\.global|atom\.global|red\.global|cp\.async|cp\.reduce\.async)")


# the FP8 weight type and its (max, smallest normal) per target
_FP8 = {"sm90": ("*fp8e4nv", 448.0, 2.0**-6), "sm100": ("*fp8e4nv", 448.0, 2.0**-6), "gfx942": ("*fp8e4b8", 240.0, 2.0**-7),
        "gfx950": ("*fp8e4nv", 448.0, 2.0**-6)}


def _target(name: str) -> GPUTarget:
    if name.startswith("sm"):
        return GPUTarget("cuda", int(name[2:]), 32)
    return GPUTarget("hip", name, 64)


def compiled(name: str, target: str, use_pdl: bool) -> dict[str, str | bytes]:
    """Kernel ``name`` of KERNELS compiled for ``target``: its assembly by stage (ptx, cubin, amdgcn, ...), with
    pointers and strides 16-aligned as a launch on real tensors specialises them."""
    kernel, constexprs = {**KERNELS, **PLAIN_KERNELS}[name]
    fp8_type, fp8_max, min_normal = _FP8[target]
    consts = {**constexprs, "USE_PDL": use_pdl} if name in KERNELS else dict(constexprs)
    if "FP8_MAX" in consts:
        consts |= {"FP8_MAX": fp8_max, "FP8_MIN_NORMAL": min_normal}
    signature = {}
    for p in kernel.params:  # type: ignore[attr-defined]
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            if p.name in _FP32_POINTERS.get(name, ()):
                signature[p.name] = "*fp32"
            elif p.name in _FP8_POINTERS.get(name, ()):
                signature[p.name] = fp8_type
            else:
                signature[p.name] = _POINTERS.get(p.name, "*bf16")
        else:
            signature[p.name] = "fp32" if p.name in _FLOATS else "i32"
    options: dict[str, object] = {"num_warps": 4, "num_stages": 3, **_OPTIONS.get(name, {})}
    if use_pdl:
        options["launch_pdl"] = True
    names = [p.name for p in kernel.params]  # type: ignore[attr-defined]
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n in names
               if signature[n].startswith("*") or (signature[n] == "i32" and n not in _UNALIGNED)}
    out = compile(ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=aligned),
                  target=_target(target), options=options)
    return dict(out.asm)


def spilled_bytes(cubin: bytes) -> int | None:
    """Stack plus local memory of a cubin's kernel (register spills), from the bundled cuobjdump (None without)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True)
    line = next(x for x in usage.stdout.splitlines() if "REG:" in x)
    return sum(int(re.search(rf"{key}:(\d+)", line).group(1)) for key in ("STACK", "LOCAL"))  # type: ignore[union-attr]


def first_lines(ptx: str) -> tuple[int | None, int | None, int]:
    """(line of the first griddepcontrol.wait, line of the first global load/store/atomic, L2 prefetches before
    the wait), None where absent. A prefetch is a hint, not an access: the weights' may come before the wait."""
    wait = memory = None
    prefetches = 0
    for i, line in enumerate(ptx.splitlines()):
        if wait is None and "griddepcontrol.wait" in line:
            wait = i
        if memory is None and _GLOBAL.match(line):
            memory = i
        if wait is None and "prefetch.global.L2" in line:
            prefetches += 1
    return wait, memory, prefetches


def pdl_rows() -> None:
    for name in KERNELS:
        pdl = compiled(name, "sm90", True)
        plain = compiled(name, "sm90", False)
        wait, memory, prefetches = first_lines(str(pdl["ptx"]))
        plain_wait, _, plain_prefetches = first_lines(str(plain["ptx"]))
        print(json.dumps({"kernel": name, "wait_line": wait, "first_global_access_line": memory,
                          "prefetches_before_wait": prefetches,
                          "plain_variant_waits": plain_wait is not None or plain_prefetches > 0,
                          "spilled_bytes": [spilled_bytes(bytes(pdl["cubin"])), spilled_bytes(bytes(plain["cubin"]))]}),
              flush=True)
    for name in PLAIN_KERNELS:
        plain = compiled(name, "sm90", False)
        print(json.dumps({"kernel": name, "spilled_bytes": [spilled_bytes(bytes(plain["cubin"]))]}), flush=True)


def build_rows(target: str) -> None:
    for name in [*KERNELS, *PLAIN_KERNELS]:
        try:
            asm = compiled(name, target, False)
            print(json.dumps({"kernel": name, "compiled": "amdgcn" in asm or "cubin" in asm, "error": None}),
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - reported per kernel, the test says which failed
            print(json.dumps({"kernel": name, "compiled": False, "error": f"{type(exc).__name__}: {exc}"[:500]}),
                  flush=True)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "sm90"
    if which == "sm90":
        pdl_rows()
    else:
        build_rows(which)
