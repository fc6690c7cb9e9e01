"""Platform tests run on any machine: vendor runtimes are replaced by stand-in modules (tests/platforms/standins.py)
that implement the vendor's documented semantics in torch, so what is tested is sgl's own logic around them.

NOTE: TRITON_INTERPRET is read when a kernel is decorated, so it is set before ``sgl.kernels`` is first imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


def checkout_entry_points() -> list[metadata.EntryPoint]:
    """This checkout's ``sgl.plugins`` entry points, read from its pyproject.toml (the installed metadata may be an
    older checkout's)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [metadata.EntryPoint(name, value, "sgl.plugins")
            for name, value in project["entry-points"]["sgl.plugins"].items()]


@pytest.fixture
def checkout_plugins(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Discovery over this checkout's entry points, process-wide for the test (caches reset before and after)."""
    from sgl.core import plugins as plugins_mod

    monkeypatch.setattr(plugins_mod, "_entry_points", checkout_entry_points)
    monkeypatch.delenv("SGL_BACKEND", raising=False)
    plugins_mod.reset_plugins()
    yield plugins_mod.get_plugins()
    plugins_mod.reset_plugins()


@pytest.fixture(scope="session")
def checkout_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding an ``sgl`` dist-info with this checkout's entry points and extras: first on a
    subprocess's PYTHONPATH, it is the ``sgl`` distribution importlib.metadata finds there (it keeps the first of a
    name), so the CLI in a subprocess sees exactly this checkout's plugins."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("checkout_site")
    info = site / f"sgl-{project['version']}.dist-info"
    info.mkdir()
    extras = "".join(f"Provides-Extra: {e}\n" for e in project["optional-dependencies"])
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sgl\nVersion: {project['version']}\n{extras}")
    eps = "".join(f"{n} = {v}\n" for n, v in project["entry-points"]["sgl.plugins"].items())
    (info / "entry_points.txt").write_text(f"[sgl.plugins]\n{eps}")
    return site


def subprocess_env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SGL_BACKEND", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return {**env, **extra}


def sgl_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from sgl.cli import main; main()", *args]
