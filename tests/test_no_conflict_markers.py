"""No merge-conflict markers in tracked sources or docs (a merge that left one still imports, and docs still render)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(<{7}|>{7})( |$)|^={7}$", re.MULTILINE)


def test_no_tracked_file_holds_a_conflict_marker() -> None:
    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.toml", "*.sh", "*.json"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    assert files, "git ls-files listed nothing"
    bad = [f for f in files if (ROOT / f).is_file() and MARKER.search((ROOT / f).read_text(errors="replace"))]
    assert bad == []
