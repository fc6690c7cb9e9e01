"""The Intel XPU platform's own logic on a CPU build of torch, and with a stand-in ``torch.xpu``
(tests/platforms/standins.py): detection and its reasons, memory, XPU graphs where the build has them, and the
portable Triton pieces. Nothing here has run on an Intel GPU."""

from __future__ import annotations

from typing import Any

import subprocess
import sys
import tomllib

import pytest
import torch

from sgl.plugins.xpu.platform import XpuPlatform
from tests.platforms.conftest import REPO, needs_triton
from tests.platforms.standins import standin_torch_dot_xpu


@pytest.fixture
def xpu(monkeypatch: pytest.MonkeyPatch):
    def install(graphs: bool = True):
        device = standin_torch_dot_xpu(graphs=graphs)
        monkeypatch.setattr(torch, "xpu", device)
        return device

    return install


def test_on_a_torch_without_xpu_support_xpu_is_unavailable_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.xpu, "_is_compiled", lambda: False)
    assert XpuPlatform.is_available() is False
    assert XpuPlatform.unavailable_reason() == "torch is not an XPU build"
    monkeypatch.delattr(torch, "xpu")
    assert XpuPlatform.unavailable_reason() == "this torch has no torch.xpu: PyTorch 2.5+ is needed"


def test_an_xpu_build_without_a_visible_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.xpu, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    assert XpuPlatform.unavailable_reason() == "no Intel GPU is visible to torch.xpu"


def test_with_an_intel_gpu_xpu_is_the_native_xpu_device_on_xccl(xpu: Any) -> None:
    device = xpu()
    p = XpuPlatform()
    assert XpuPlatform.is_available()
    assert (p.device_type, p.dist_backend, p.device(1)) == ("xpu", "xccl", torch.device("xpu", 1))
    p.set_device(1)
    assert device.state["device"] == 1 and (p.total_memory(), p.free_memory()) == (48 << 30, 40 << 30)


def test_xpu_graphs_are_a_capability_only_where_the_build_has_them(xpu: Any) -> None:
    xpu(graphs=True)
    p = XpuPlatform()
    assert p.capabilities.graph_capture and p.new_graph() == "graph"
    assert p.graph_capture("graph", "pool", "s") == ("capture", "graph", "pool", "s")
    xpu(graphs=False)
    assert not XpuPlatform().capabilities.graph_capture and XpuPlatform().new_graph() is None


@needs_triton
def test_xpu_runs_the_portable_triton_pieces(xpu: Any) -> None:
    from sgl import kernels
    from sgl.kernels.attention_backend import TritonAttnBackend
    from sgl.kernels.linear_method import SkinnyLinearMethod

    xpu()
    p = XpuPlatform()
    assert p.default_attention_backend() == "triton" and p.capabilities.triton
    assert type(p.attention_backend("triton", None)) is TritonAttnBackend
    assert isinstance(p.linear_method(None), SkinnyLinearMethod)
    assert p.ops().rms_norm is kernels.rms_norm and p.ops().rotary_embedding is kernels.rotary_embedding


def test_the_xpu_plugin_needs_neither_ipex_nor_another_vendor_plugin() -> None:
    code = ("import sys, sgl.plugins.xpu.plugin, sgl.plugins.xpu.platform; "
            "print(sorted(m for m in sys.modules if m.startswith(('sgl.plugins.cuda', 'sgl.plugins.rocm', "
            "'intel_extension_for_pytorch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         check=True)
    assert out.stdout.strip() == "[]"
    text = (REPO / "sgl" / "plugins" / "xpu" / "platform.py").read_text()
    assert "import intel_extension_for_pytorch" not in text and "ipex" not in text.lower()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["xpu"] == [], "PyPI's triton has no XPU backend and would replace pytorch-triton-xpu"
