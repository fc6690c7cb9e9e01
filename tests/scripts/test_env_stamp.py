"""scripts/env installs once: a second start with the same pyproject.toml and extras runs no pip, at once.

The checkout is a copy in a temporary directory whose .venv holds stand-ins for python and pip that only record
how they were called, so the test needs no network and installs nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_PIP = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../pip-calls.log"
exit "${FAKE_PIP_EXIT:-0}"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "env", tmp_path / "scripts" / "env")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name, body in (("python", "#!/bin/sh\nexit 0\n"), ("pip", FAKE_PIP)):
        (venv_bin / name).write_text(body)
        (venv_bin / name).chmod(0o755)
    return tmp_path


def _env(checkout: Path, extras: str, **env: str) -> float:
    t0 = time.monotonic()
    subprocess.run([str(checkout / "scripts" / "env"), extras], check=True, env={**os.environ, **env},
                   capture_output=True)
    return time.monotonic() - t0


def _pip_calls(checkout: Path) -> list[str]:
    log = checkout / ".venv" / "pip-calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_second_start_runs_no_pip_and_returns_at_once(checkout: Path) -> None:
    _env(checkout, "serve,grammar")
    assert _pip_calls(checkout) == ["install -q -e .[serve,grammar]"]
    took = _env(checkout, "serve,grammar")
    assert _pip_calls(checkout) == ["install -q -e .[serve,grammar]"]
    assert took < 0.5


def test_new_extras_a_changed_pyproject_or_sgl_reinstall_install_again(checkout: Path) -> None:
    _env(checkout, "serve,grammar")
    _env(checkout, "test")
    assert len(_pip_calls(checkout)) == 2
    _env(checkout, "test")
    assert len(_pip_calls(checkout)) == 2
    with open(checkout / "pyproject.toml", "a") as f:
        f.write("\n# a new dependency would change this file\n")
    _env(checkout, "test")
    assert len(_pip_calls(checkout)) == 3
    _env(checkout, "test", SGL_REINSTALL="1")
    assert len(_pip_calls(checkout)) == 4


def test_a_failed_install_leaves_no_stamp(checkout: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        _env(checkout, "serve,grammar", FAKE_PIP_EXIT="1")
    _env(checkout, "serve,grammar")
    assert len(_pip_calls(checkout)) == 2
