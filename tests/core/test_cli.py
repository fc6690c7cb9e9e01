"""The `sgl` command line as a user runs it: a fresh interpreter per command, real exit codes and streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_sgl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "SGL_BACKEND"}
    return subprocess.run(
        [sys.executable, "-m", "sgl.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
    )


def test_help_lists_the_commands() -> None:
    result = run_sgl("--help")
    assert result.returncode == 0, result.stderr
    for command in ("plugins", "demo-model"):
        assert command in result.stdout


def test_help_imports_neither_torch_nor_server_dependencies() -> None:
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['sgl', '--help']\n"
        "try:\n"
        "    runpy.run_module('sgl.cli', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'fastapi', 'uvicorn', 'transformers') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stdout


def test_version_prints_the_package_version() -> None:
    result = run_sgl("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sgl 0.1.0"


def test_plugins_shows_plugins_platforms_active_models_and_attention_backends() -> None:
    result = run_sgl("plugins", "--backend", "cpu")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "core-models" in out and "sgl.core.models.builtin" in out
    assert "xpu_cpu" in out and "sgl.plugins.xpu_cpu.plugin" in out
    assert "sgl 0.1.0" in out
    assert "Active platform: cpu (device type cpu, dist backend gloo)" in out
    assert "capabilities: triton=no" in out
    model_lines = [line for line in out.splitlines() if "LlamaForCausalLM" in line]
    assert model_lines and "plugin core-models" in model_lines[0]
    assert "torch_native" in out


def test_plugins_json_is_machine_readable() -> None:
    result = run_sgl("plugins", "--json", "--backend", "cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plugins = {p["name"]: p for p in report["plugins"]}
    assert plugins["xpu_cpu"] == {
        "name": "xpu_cpu",
        "module": "sgl.plugins.xpu_cpu.plugin",
        "distribution": "sgl",
        "version": "0.1.0",
    }
    platforms = {p["name"]: p for p in report["platforms"]}
    assert platforms["cpu"]["available"] is True and platforms["cpu"]["how_to_get"] is None
    for row in platforms.values():
        assert row["available"] or row["how_to_get"], (
            f"unavailable platform {row['name']} gives no way to get it"
        )
    active = report["active_platform"]
    assert (active["name"], active["device_type"], active["dist_backend"]) == ("cpu", "cpu", "gloo")
    assert active["capabilities"]["bf16"] is True
    models = {m["name"]: m["plugin"] for m in report["models"]}
    assert models["Qwen3ForCausalLM"] == "core-models"
    assert {"name": "torch_native", "plugin": "sgl (core)"} in report["attention_backends"]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("plugins", "--backend", "nope"), {}, "backend 'nope' is unknown; available here: "),
        (("plugins", "--json"), {"SGL_BACKEND": "from_env"}, "backend 'from_env' is unknown"),
    ],
    ids=["flag", "environment"],
)
def test_bad_backend_exits_2_with_one_line_and_no_traceback(
    args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    result = run_sgl(*args, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_demo_model_writes_the_model_and_prints_its_path(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sgl.cli import app

    target = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo-model", str(target), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert Path(result.output.strip()) == target
    assert (target / "config.json").is_file()
