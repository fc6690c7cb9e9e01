"""The speculative plugin's entry point, where the installed sgl predates it.

NOTE: discovery reads entry points from installed metadata. A checkout whose venv was installed before this plugin
existed lacks ``speculative = sgl.plugins.speculative.plugin``; the tests then add exactly that entry point through a
throwaway distribution on sys.path (and PYTHONPATH, for subprocesses). After ``pip install -e .`` this does nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from importlib import metadata

import pytest

from sgl.core.plugins import reset_plugins

ENTRY = "sgl.plugins.speculative.plugin"


@pytest.fixture(scope="session", autouse=True)
def speculative_entry_point(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if any(ep.value == ENTRY for ep in metadata.entry_points(group="sgl.plugins")):
        yield
        return
    site = tmp_path_factory.mktemp("spec_site")
    info = site / "sgl_speculative_entry-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sgl-speculative-entry\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[sgl.plugins]\nspeculative = {ENTRY}\n")
    sys.path.insert(0, str(site))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([p for p in (old, str(site)) if p])
    reset_plugins()
    yield
    sys.path.remove(str(site))
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old
    reset_plugins()
