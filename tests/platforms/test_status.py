"""Honest status: `sgl plugins` lists every platform as active, available or unavailable (with why) and whether it has
run on its hardware; a named backend that cannot run here stops `sgl serve` in seconds with one line; importing a
vendor plugin on a machine without its runtime never raises."""

from __future__ import annotations

from typing import Any

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.platforms.conftest import REPO, sgl_command, subprocess_env

VENDOR_PACKAGES = ("rocm", "ascend", "xpu")
UNVERIFIED = {"rocm", "ascend", "xpu"}


def _plugins_json(site: Path) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(sgl_command("plugins", "--json"), capture_output=True, text=True, timeout=300,
                         env=subprocess_env(site), cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_sgl_plugins_lists_all_five_platforms_with_their_true_status(checkout_site: Path) -> None:
    report = _plugins_json(checkout_site)
    rows = {p["name"]: p for p in report["platforms"]}
    assert set(rows) >= {"cpu", "cuda", "rocm", "ascend", "xpu"}
    assert report["failed_plugins"] == []
    active = report["active_platform"]["name"]
    for name, row in rows.items():
        assert row["status"] == ("active" if name == active else "available" if row["available"] else "unavailable")
        assert (row["why"] is None) == row["available"], row
        assert row["verified_on_hardware"] is (name not in UNVERIFIED), name
    if torch.version.hip is None:
        assert rows["rocm"]["why"] == "torch is not a ROCm build"
    if importlib.util.find_spec("torch_npu") is None:
        assert rows["ascend"]["why"] == "torch_npu is not installed"
    if not torch.xpu._is_compiled():
        assert rows["xpu"]["why"] == "torch is not an XPU build"
    if not torch.cuda.is_available():
        assert active == "cpu"


def test_the_plugins_table_says_verified_on_hardware_no_for_the_vendor_platforms(checkout_site: Path) -> None:
    out = subprocess.run(sgl_command("plugins"), capture_output=True, text=True, timeout=300,
                         env=subprocess_env(checkout_site), cwd=REPO, check=True).stdout
    lines = out.split("Platforms:")[1].split("Active platform")[0].strip().splitlines()
    rows = {line.split()[0]: line for line in lines}
    for name in UNVERIFIED:
        assert "verified on hardware: no" in rows[name], rows[name]
    assert "verified on hardware: yes" in rows["cpu"]


@pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed here")
def test_serve_on_ascend_without_torch_npu_exits_in_seconds_with_one_line(checkout_site: Path) -> None:
    start = time.monotonic()
    out = subprocess.run(sgl_command("serve", "--backend", "ascend"), capture_output=True, text=True, timeout=120,
                         env=subprocess_env(checkout_site), cwd=REPO)
    elapsed = time.monotonic() - start
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: backend 'ascend' is not available on this machine (torch_npu is not installed); available here: "
        + out.stderr.split("available here: ")[1].split(";")[0] + "; install it with: pip install 'sgl[ascend]'"
    ]
    assert "Traceback" not in out.stderr + out.stdout and "Uvicorn" not in out.stderr + out.stdout
    assert elapsed < 60, f"took {elapsed:.0f}s: nothing should start before the backend check"


@pytest.mark.skipif(torch.version.hip is not None, reason="this torch is a ROCm build")
def test_serve_on_rocm_with_a_cuda_or_cpu_torch_names_the_reason(checkout_site: Path) -> None:
    out = subprocess.run(sgl_command("serve", "--backend", "rocm"), capture_output=True, text=True, timeout=120,
                         env=subprocess_env(checkout_site), cwd=REPO)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "backend 'rocm' is not available on this machine (torch is not a ROCm build)" in out.stderr


def test_every_vendor_plugin_module_imports_without_its_runtime() -> None:
    """Each module of the rocm, ascend and xpu packages, with aiter and torch_npu absent (a fresh interpreter
    that hides them), imports without raising; the Triton-backed ones need only triton."""
    modules = sorted(
        f"sgl.plugins.{pkg}.{path.stem}" for pkg in VENDOR_PACKAGES
        for path in (REPO / "sgl" / "plugins" / pkg).glob("*.py") if path.stem != "__init__"
    )
    if importlib.util.find_spec("triton") is None:
        modules = [m for m in modules if m != "sgl.plugins.rocm.aiter_backend"]
    code = (
        "import importlib, importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n in ('aiter', 'torch_npu') else real(n, *a)\n"
        "sys.modules['aiter'] = None; sys.modules['torch_npu'] = None  # an import of either raises\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "from sgl.plugins.ascend.platform import AscendPlatform\n"
        "from sgl.plugins.rocm.platform import RocmPlatform\n"
        "print(AscendPlatform.is_available(), AscendPlatform.unavailable_reason())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False torch_npu is not installed")


def test_discovery_over_this_checkout_loads_every_vendor_plugin_without_failures(checkout_plugins: Any) -> None:
    assert checkout_plugins.failures == []
    assert {"rocm", "ascend", "xpu", "cuda", "cpu"} <= set(checkout_plugins.platforms.names())
    assert {"aiter", "ascend", "triton", "torch_native"} <= set(checkout_plugins.attention_backends.names())
    assert checkout_plugins.attention_backends.origin("aiter") == "rocm"
