"""The Ascend platform's own logic with torch_npu absent, and with a stand-in torch_npu and torch.npu
(tests/platforms/standins.py): detection and its reasons, memory through torch.npu, NPU graphs where present, and the
attention, RMSNorm and rotary paths against the torch reference. Nothing here has run on an NPU."""

from __future__ import annotations

import importlib
import logging
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sgl.core.attention.torch_native import TorchNativeAttnBackend
from sgl.core.ops import reference
from sgl.core.runner.forward_batch import ForwardMode
from sgl.plugins.ascend import runtime
from sgl.plugins.ascend.platform import AscendPlatform
from tests.kernels.kernel_oracle import Paged
from tests.platforms.standins import standin_torch_dot_npu, standin_torch_npu

HEADS, KV_HEADS, DIM = 4, 2, 16


@pytest.fixture
def fresh_runtime():
    runtime.npu_runtime.cache_clear()
    yield
    runtime.npu_runtime.cache_clear()


@pytest.fixture
def npu(monkeypatch: pytest.MonkeyPatch, fresh_runtime):
    """Installs the stand-ins; returns (torch_npu stand-in, torch.npu stand-in, recorded attention calls)."""

    def install(graphs: bool = True, scale_keyword: str = "scale") -> SimpleNamespace:
        calls: list[dict[str, Any]] = []
        module = standin_torch_npu(calls, scale_keyword)
        device = standin_torch_dot_npu(graphs=graphs)
        monkeypatch.setitem(sys.modules, "torch_npu", module)
        monkeypatch.setattr(torch, "npu", device, raising=False)
        runtime.npu_runtime.cache_clear()
        return SimpleNamespace(module=module, device=device, calls=calls)

    return install


def test_without_torch_npu_ascend_is_unavailable_and_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, fresh_runtime: None
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda n, *a: None if n == "torch_npu" else real(n, *a))
    assert AscendPlatform.is_available() is False
    assert AscendPlatform.unavailable_reason() == "torch_npu is not installed"
    assert "torch_npu" not in sys.modules


def test_a_torch_npu_that_fails_to_import_reads_as_unavailable_not_as_a_crash(
    monkeypatch: pytest.MonkeyPatch, fresh_runtime: None
) -> None:
    real_find, real_import = importlib.util.find_spec, importlib.import_module
    monkeypatch.setattr(runtime.importlib.util, "find_spec",
                        lambda n, *a: object() if n == "torch_npu" else real_find(n, *a))

    def broken(name: str, *a: Any) -> Any:
        if name == "torch_npu":
            raise OSError("libascendcl.so: cannot open shared object file\nmore")
        return real_import(name, *a)

    monkeypatch.setattr(runtime.importlib, "import_module", broken)
    assert AscendPlatform.unavailable_reason() == (
        "torch_npu failed to import: OSError: libascendcl.so: cannot open shared object file"
    )


def test_with_torch_npu_ascend_is_the_npu_device_on_hccl_with_memory_from_torch_npu(npu: Any) -> None:
    env = npu()
    assert AscendPlatform.is_available() and AscendPlatform.unavailable_reason() is None
    p = AscendPlatform()
    assert (p.device_type, p.dist_backend, p.default_attention_backend()) == ("npu", "hccl", "ascend")
    p.set_device(3)
    assert env.device.state["device"] == 3  # NOTE: torch.device("npu") exists only once the real torch_npu registers it
    assert (p.total_memory(), p.free_memory()) == (64 << 30, 60 << 30)
    p.manual_seed(7)
    assert env.device.state["seed"] == 7
    assert p.capabilities.triton is False and p.capabilities.fp8 is False


def test_npu_graphs_are_a_capability_only_where_torch_npu_has_them(npu: Any) -> None:
    npu(graphs=True)
    p = AscendPlatform()
    assert p.capabilities.graph_capture and p.new_graph() == "graph" and p.graph_pool() == "pool"
    assert p.graph_capture("graph", "pool", "s") == ("capture", "graph", "pool", "s")
    npu(graphs=False)
    assert not AscendPlatform().capabilities.graph_capture and AscendPlatform().new_graph() is None


def test_decode_runs_eagerly_with_the_ascend_attention_backend_and_says_so(
    npu: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from sgl.plugins.ascend import platform as ascend_platform
    from sgl.plugins.ascend.attention import AscendAttnBackend

    npu(graphs=True)
    ascend_platform._log_once.cache_clear()
    runner = SimpleNamespace(attn_backend=AscendAttnBackend(None))
    with caplog.at_level(logging.WARNING):
        assert AscendPlatform().graph_runner(runner) is None
    assert "ascend: decode runs eagerly: attention backend AscendAttnBackend cannot be captured" in caplog.text


# attention ----------------------------------------------------------------------------------------------------------
class Layer:
    layer_id, num_heads, num_kv_heads, head_dim, scaling = 0, HEADS, KV_HEADS, DIM, DIM**-0.5


def _run_steps(backend: Any, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Extend over cached prefixes, then two decode steps, on a fresh paged pool; returns each step's output."""
    torch.manual_seed(seed)
    paged = Paged.make(KV_HEADS, DIM, dtype, torch.device("cpu"), seed=seed)
    reqs, prefix = [2, 0, 1], [5, 0, 2]
    for r, p in zip(reqs, prefix):
        paged.fill_prefix(r, p)
    outs = []
    steps = ((ForwardMode.EXTEND, [3, 4, 1]), (ForwardMode.DECODE, [1, 1, 1]), (ForwardMode.DECODE, [1, 1, 1]))
    for mode, ext in steps:
        fb = paged.batch(reqs, prefix, ext, mode, backend)
        q = torch.randn(sum(ext), HEADS * DIM).to(dtype)
        k, v = torch.randn(sum(ext), KV_HEADS * DIM).to(dtype), torch.randn(sum(ext), KV_HEADS * DIM).to(dtype)
        backend.init_forward_metadata(fb)
        outs.append(backend.forward(q, k, v, Layer(), fb))
        prefix = [p + n for p, n in zip(prefix, ext)]
    return outs


@pytest.mark.parametrize("scale_keyword", ["scale", "scale_value"])
def test_fused_attention_matches_the_reference_backend(npu: Any, scale_keyword: str) -> None:
    """bf16 goes through the fused op (prompt path with the prefix-shifted mask, incremental path without one)."""
    from sgl.plugins.ascend import attention

    env = npu(scale_keyword=scale_keyword)
    op = env.module.npu_fused_infer_attention_score
    op._schema = SimpleNamespace(arguments=[SimpleNamespace(name=n) for n in ("query", scale_keyword)])
    got = _run_steps(attention.AscendAttnBackend(None), torch.bfloat16)
    want = _run_steps(TorchNativeAttnBackend(None), torch.bfloat16)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), atol=2e-2, rtol=2e-2)
    prompt = [c for c in env.calls if c["n"] > 1]
    incremental = [c for c in env.calls if c["n"] == 1]
    assert prompt and all(c["mask"] for c in prompt), "many query tokens need the causal mask"
    assert len(incremental) == 2 * 3 + 1 and not any(c["mask"] for c in incremental)
    assert all((c["num_heads"], c["kv_heads"]) == (HEADS, KV_HEADS) for c in env.calls)


def test_fp32_or_a_torch_npu_without_the_op_takes_the_torch_reference(
    npu: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from sgl.plugins.ascend import attention

    env = npu()
    got = _run_steps(attention.AscendAttnBackend(None), torch.float32)
    want = _run_steps(TorchNativeAttnBackend(None), torch.float32)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert env.calls == [], "the fused op takes fp16/bf16 only"
    del env.module.npu_fused_infer_attention_score
    attention._log_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        backend = attention.AscendAttnBackend(None)
    assert "torch_npu has no npu_fused_infer_attention_score: attention runs as the torch reference" in caplog.text
    for g, w in zip(_run_steps(backend, torch.bfloat16), _run_steps(TorchNativeAttnBackend(None), torch.bfloat16)):
        torch.testing.assert_close(g, w)


# norms and rotary ---------------------------------------------------------------------------------------------------
def test_rmsnorm_and_rotary_go_through_torch_npu_and_match_the_reference(npu: Any) -> None:
    npu()
    ops = AscendPlatform().ops()
    assert ops.rms_norm is not reference.rms_norm and ops.rotary_embedding is not reference.rotary_embedding
    torch.manual_seed(0)
    x, r, w = torch.randn(5, 32), torch.randn(5, 32), torch.randn(32)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
    for got, want in zip(ops.add_rms_norm(x, r, w, 1e-6), reference.add_rms_norm(x, r, w, 1e-6)):
        torch.testing.assert_close(got, want)
    positions = torch.tensor([0, 3, 7, 2, 9])
    freqs = torch.outer(torch.arange(16).float(), 1.0 / (10000 ** (torch.arange(0, DIM, 2).float() / DIM)))
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    q, k = torch.randn(5, HEADS * DIM), torch.randn(5, KV_HEADS * DIM)
    for is_neox in (True, False):  # the interleaved layout is the reference's, through the same entry point
        got = ops.rotary_embedding(positions, q, k, DIM, cache, is_neox)
        want = reference.rotary_embedding(positions, q, k, DIM, cache, is_neox)
        for g, w2 in zip(got, want):
            torch.testing.assert_close(g, w2, atol=1e-5, rtol=1e-5)


def test_a_torch_npu_without_the_fused_ops_leaves_the_reference_ops(npu: Any) -> None:
    env = npu()
    for name in ("npu_rms_norm", "npu_add_rms_norm", "npu_rotary_mul"):
        delattr(env.module, name)
    ops = AscendPlatform().ops()
    assert (ops.rms_norm, ops.add_rms_norm, ops.rotary_embedding) == (
        reference.rms_norm, reference.add_rms_norm, reference.rotary_embedding
    )
