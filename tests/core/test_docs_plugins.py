"""docs/plugins.md cannot drift: every ```python block on the page runs, in order, in one namespace, in a temp dir."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, source) of each fenced python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_the_page_has_python_blocks_to_run() -> None:
    assert len(python_blocks(DOC.read_text())) >= 8


def test_every_python_block_of_docs_plugins_md_runs_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SGL_BACKEND", raising=False)
    # NOTE: a real module, so classes defined by the snippets have a module that dataclasses and pickle can find.
    module = types.ModuleType("sgl_docs_plugins_page")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for line, source in python_blocks(DOC.read_text()):
        code = compile(source, f"{DOC}:{line}", "exec")
        try:
            exec(code, module.__dict__)
        except Exception as exc:
            raise AssertionError(f"the python block at docs/plugins.md line {line} failed: {exc!r}") from exc
    assert os.listdir(tmp_path), "the page's demo model was written into the temp dir, not the repository"
