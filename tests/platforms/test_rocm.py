"""The ROCm platform's own logic, with torch's HIP answers patched and AMD's aiter replaced by a stand-in
(tests/platforms/standins.py): detection, the FP8 encoding per architecture, the aiter-or-Triton choice, and the aiter
backend's page table. Nothing here has run on AMD hardware."""

from __future__ import annotations

from typing import Any

import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from sgl.core.config import ServerArgs
from sgl.core.memory.kv_pool import KVPool
from sgl.core.runner.model_runner import resolve_kv_cache_dtype
from sgl.plugins.rocm import arch as arch_mod
from sgl.plugins.rocm import platform as rocm
from tests.platforms.conftest import REPO, needs_triton
from tests.platforms.standins import standin_aiter, unrelated_pypi_aiter


@pytest.fixture
def on_arch(monkeypatch: pytest.MonkeyPatch):
    """Makes torch look like a HIP build with one visible GPU of the given gfx architecture."""

    def set_arch(name: str) -> None:
        monkeypatch.setattr(torch.version, "hip", "6.3.0")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(arch_mod, "device_arch", lambda: name)
        rocm._aiter.cache_clear()
        rocm._probe_capabilities.cache_clear()

    yield set_arch
    rocm._aiter.cache_clear()
    rocm._probe_capabilities.cache_clear()


@pytest.fixture
def no_aiter(monkeypatch: pytest.MonkeyPatch) -> None:
    real = arch_mod.importlib.util.find_spec
    monkeypatch.setattr(arch_mod.importlib.util, "find_spec", lambda n, *a: None if n == "aiter" else real(n, *a))
    monkeypatch.delitem(sys.modules, "aiter", raising=False)


# detection -----------------------------------------------------------------------------------------------------------
def test_rocm_is_unavailable_on_a_torch_without_hip_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.delenv(rocm.ON_CUDA.name, raising=False)
    assert rocm.RocmPlatform.is_available() is False
    assert rocm.RocmPlatform.unavailable_reason() == "torch is not a ROCm build"


def test_rocm_is_detected_through_torch_version_hip_on_the_cuda_device_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "hip", "6.3.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rocm.RocmPlatform.unavailable_reason() == "no AMD GPU is visible to torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert rocm.RocmPlatform.is_available() and rocm.RocmPlatform.unavailable_reason() is None
    p = rocm.RocmPlatform()
    assert (p.device_type, p.dist_backend, p.device(1)) == ("cuda", "nccl", torch.device("cuda", 1))


def test_the_test_only_override_lets_rocm_run_on_a_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(rocm.ON_CUDA.name, "1")
    assert rocm.RocmPlatform.is_available()


# FP8 and capabilities from the architecture --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gcn_arch,fp8,fp4",
    [("gfx942:sramecc+:xnack-", torch.float8_e4m3fnuz, False), ("gfx950", torch.float8_e4m3fn, True),
     ("gfx90a:sramecc+:xnack-", None, False), ("gfx1100", None, False)],
)
def test_fp8_encoding_and_capabilities_follow_the_architecture(
    gcn_arch: str, fp8: torch.dtype | None, fp4: bool
) -> None:
    name = arch_mod.gfx_name(gcn_arch)
    assert arch_mod.fp8_dtype_for(gcn_arch) == fp8
    caps = rocm.capabilities_for(name, triton=True)
    assert (caps.fp8, caps.fp4, caps.triton, caps.graph_capture) == (fp8 is not None, fp4, True, True)


@pytest.mark.parametrize("name,expected", [("gfx942", torch.float8_e4m3fnuz), ("gfx950", torch.float8_e4m3fn),
                                           ("gfx90a", torch.float8_e4m3fn)])
def test_kv_cache_fp8_e4m3_is_the_platforms_encoding(on_arch: Any, name: str, expected: torch.dtype) -> None:
    on_arch(name)
    platform = rocm.RocmPlatform()
    assert platform.fp8_dtype() == expected
    assert resolve_kv_cache_dtype(ServerArgs(kv_cache_dtype="fp8_e4m3"), torch.bfloat16, platform) == expected
    assert resolve_kv_cache_dtype(ServerArgs(kv_cache_dtype="fp8_e5m2"), torch.bfloat16, platform) == torch.float8_e5m2
    assert resolve_kv_cache_dtype(ServerArgs(), torch.bfloat16, platform) == torch.bfloat16


def test_a_fnuz_kv_pool_saturates_at_its_own_bound_240() -> None:
    pool = KVPool(8, 1, 1, 1, 4, torch.float8_e4m3fnuz)
    k = torch.tensor([[1000.0, -1000.0, 100.0, float("inf")]])
    pool.set_kv_buffer(0, torch.tensor([2]), k, k)
    assert pool.k_buffer[0][2, 0].float().tolist() == [240.0, -240.0, 96.0, 240.0]


# aiter or Triton -----------------------------------------------------------------------------------------------------
@needs_triton
def test_aiter_is_the_default_attention_where_amds_module_runs_on_a_supported_arch(
    on_arch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "aiter", standin_aiter())
    on_arch("gfx942")
    assert rocm.RocmPlatform().default_attention_backend() == "aiter"


@needs_triton
@pytest.mark.parametrize(
    "module,name,why",
    [(None, "gfx942", "aiter is not installed"),
     ("pypi", "gfx942", "the installed 'aiter' is not AMD's ROCm/aiter (it lacks paged_attention_ragged"),
     ("amd", "gfx90a", "aiter is not built for gfx90a")],
)
def test_triton_attention_is_the_fallback_and_the_log_says_why(
    on_arch: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, module: str | None, name: str,
    why: str,
) -> None:
    if module is None:
        real = arch_mod.importlib.util.find_spec
        monkeypatch.setattr(arch_mod.importlib.util, "find_spec", lambda n, *a: None if n == "aiter" else real(n, *a))
        monkeypatch.delitem(sys.modules, "aiter", raising=False)
    else:
        monkeypatch.setitem(sys.modules, "aiter", unrelated_pypi_aiter() if module == "pypi" else standin_aiter())
    on_arch(name)
    rocm._log_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="sgl.plugins.rocm.platform"):
        assert rocm.RocmPlatform().default_attention_backend() == "triton"
    assert f"rocm: attention runs on the portable triton backend: {why}" in caplog.text


@needs_triton
def test_asking_for_aiter_where_it_cannot_run_is_one_line_naming_the_way_out(on_arch: Any, no_aiter: Any) -> None:
    from sgl.plugins.rocm.aiter_backend import AiterAttnBackend

    on_arch("gfx942")
    with pytest.raises(ValueError, match=r"^--attention-backend aiter cannot run: aiter is not installed .*; use "
                                         r"--attention-backend triton$"):
        AiterAttnBackend(None)


@needs_triton
def test_the_rocm_platform_builds_the_portable_triton_backend_itself(on_arch: Any) -> None:
    from sgl.kernels.attention_backend import TritonAttnBackend

    on_arch("gfx942")
    backend = rocm.RocmPlatform().attention_backend("triton", None)
    assert type(backend) is TritonAttnBackend


@needs_triton
def test_aiter_rmsnorm_replaces_the_triton_one_where_aiter_runs(on_arch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from sgl.core.ops import reference

    monkeypatch.setitem(sys.modules, "aiter", standin_aiter())
    monkeypatch.delitem(sys.modules, "sgl.plugins.rocm.aiter_ops", raising=False)
    on_arch("gfx942")
    ops = rocm.RocmPlatform().ops()
    assert ops.rms_norm.__module__ == "sgl.plugins.rocm.aiter_ops"
    x, r, w = torch.randn(3, 2, 16), torch.randn(3, 2, 16), torch.randn(16)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
    for got, want in zip(ops.add_rms_norm(x, r, w, 1e-6), reference.add_rms_norm(x, r, w, 1e-6)):
        torch.testing.assert_close(got, want)


@needs_triton
def test_every_triton_platform_starts_from_the_same_portable_ops_moe_included(on_arch: Any) -> None:
    """One table for cuda, rocm and xpu: a kernel added to it (the fused MoE) reaches every Triton platform."""
    from sgl import kernels
    from sgl.plugins.cuda.platform import CudaPlatform
    from sgl.plugins.xpu.platform import XpuPlatform

    on_arch("gfx942")
    portable = kernels.portable_ops()
    assert portable.fused_moe is kernels.fused_moe and portable.rms_norm is kernels.rms_norm
    for platform in (CudaPlatform(), rocm.RocmPlatform(), XpuPlatform()):
        assert platform.ops() == portable, platform.name


# the aiter backend's page table --------------------------------------------------------------------------------------
def test_the_ragged_page_table_lists_each_requests_slots_in_order() -> None:
    from sgl.plugins.rocm.aiter_backend import ragged_kv

    table = torch.zeros(4, 8, dtype=torch.int32)
    table[2, :3] = torch.tensor([7, 3, 9])
    table[0, :5] = torch.tensor([1, 2, 11, 12, 4])
    got = ragged_kv(table, torch.tensor([2, 0]), torch.tensor([3, 5]), max_len=5)
    assert got.indptr.tolist() == [0, 3, 8]
    assert got.indices.tolist() == [7, 3, 9, 1, 2, 11, 12, 4]
    assert got.last_page_lens.tolist() == [1, 1]
    assert got.indices.dtype == got.indptr.dtype == torch.int32


@needs_triton
@pytest.mark.parametrize("kv_dtype,kv_name", [(None, "auto"), (torch.float8_e4m3fnuz, "fp8")])
def test_aiter_decode_reads_the_pool_in_place_and_matches_the_oracle(
    on_arch: Any, monkeypatch: pytest.MonkeyPatch, kv_dtype: torch.dtype | None, kv_name: str
) -> None:
    """Extend runs the portable Triton kernel (interpreted on CPU); decode hands the pool, viewed as aiter's NHD
    paged cache, to the stand-in; both must agree with the contract's oracle."""
    from sgl.core.runner.forward_batch import ForwardMode
    from sgl.plugins.rocm import aiter_backend
    from tests.kernels.kernel_oracle import Paged, paged_attention_oracle

    calls: list[dict] = []
    monkeypatch.setitem(sys.modules, "aiter", standin_aiter(calls))
    monkeypatch.setattr(aiter_backend, "current_arch", lambda: "gfx942")
    torch.manual_seed(0)
    heads, kv_heads, dim = 4, 2, 32
    dtype = torch.float32
    paged = Paged.make(kv_heads, dim, kv_dtype or dtype, torch.device("cpu"))
    backend = aiter_backend.AiterAttnBackend(None)

    class Layer:
        layer_id, num_heads, num_kv_heads, head_dim, scaling = 0, heads, kv_heads, dim, dim**-0.5

    reqs, prefix = [1, 0], [4, 0]
    for r, p in zip(reqs, prefix):
        paged.fill_prefix(r, p)
    for mode, ext in ((ForwardMode.EXTEND, [3, 6]), (ForwardMode.DECODE, [1, 1]), (ForwardMode.DECODE, [1, 1])):
        fb = paged.batch(reqs, prefix, ext, mode, backend)
        q = torch.randn(sum(ext), heads * dim)
        k, v = torch.randn(sum(ext), kv_heads * dim), torch.randn(sum(ext), kv_heads * dim)
        backend.init_forward_metadata(fb)
        out = backend.forward(q, k, v, Layer(), fb)
        ref = paged_attention_oracle(q.view(-1, heads, dim), paged.kv_pool.k_buffer[0], paged.kv_pool.v_buffer[0],
                                     paged.req_to_token_pool.req_to_token, reqs, prefix, ext, Layer.scaling)
        torch.testing.assert_close(out.view(-1, heads, dim), ref, atol=1e-4, rtol=1e-4)
        prefix = [p + n for p, n in zip(prefix, ext)]
    assert [c["kv_cache_dtype"] for c in calls] == [kv_name, kv_name], "decode steps only, each through aiter"
    assert all(c["block_size"] == 1 for c in calls)
    assert calls[-1]["workspace"] >= aiter_backend.workspace_bytes(2, heads, dim, max(prefix))


def test_the_aiter_backend_says_it_cannot_be_captured() -> None:
    pytest.importorskip("triton")
    from sgl.core.attention.base import AttentionBackend
    from sgl.plugins.rocm.aiter_backend import AiterAttnBackend

    assert AiterAttnBackend.init_graph_state is AttentionBackend.init_graph_state


# boundaries ----------------------------------------------------------------------------------------------------------
def test_the_rocm_plugin_never_imports_the_cuda_plugin_nor_pulls_pypis_aiter() -> None:
    code = ("import sys, sgl.plugins.rocm.plugin, sgl.plugins.rocm.platform, sgl.plugins.rocm.arch; "
            "print(sorted(m for m in sys.modules if m.startswith('sgl.plugins.cuda') or m == 'aiter'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         check=True)
    assert out.stdout.strip() == "[]"
    for path in (REPO / "sgl" / "plugins" / "rocm").glob("*.py"):
        assert "plugins.cuda" not in path.read_text(), path
    extras = tomllib.loads(Path(REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(req.split("[")[0].split(">")[0].split("=")[0].strip().lower() == "aiter" for req in extras["rocm"])
