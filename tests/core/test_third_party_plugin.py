"""A third-party plugin installed with pip for real is found through its entry point, exactly like in-tree ones.

The fixture distribution (tests/fixtures/sgl_fixture_plugin) is built and installed by pip into a private site
directory that only this module's subprocesses put on their path. That is a real install (a wheel, a dist-info with
entry_points.txt, read by importlib.metadata in a fresh interpreter), and it keeps the shared environment untouched:
other test sessions never see the fixture, and a killed run leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

FIXTURE_SRC = Path(__file__).resolve().parents[1] / "fixtures" / "sgl_fixture_plugin"
TESTS_CORE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def fixture_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pip-installs sgl-fixture-plugin (offline, no deps) into a fresh site dir; removes it at the end."""
    work = tmp_path_factory.mktemp("fixture_plugin")
    # NOTE: setuptools writes build/ and *.egg-info next to the sources; build from a copy to keep the repo clean.
    src = work / "src"
    shutil.copytree(FIXTURE_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--target",
        str(site),
        str(src),
    ]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, (
        f"pip install of the fixture plugin failed:\n{result.stdout}\n{result.stderr}"
    )
    assert (site / "sgl_fixture_plugin-0.0.1.dist-info" / "entry_points.txt").is_file()
    yield site
    shutil.rmtree(work, ignore_errors=True)


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SGL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return {**env, **extra}


def run_sgl(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sgl.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(site, **env),
    )


def run_python(site: Path, script: str, *args: str, **env: str) -> dict[str, object]:
    """Runs ``script`` in a fresh interpreter that sees the installed fixture; it prints one JSON object last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(site, **env),
    )
    assert result.returncode == 0, f"subprocess failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_sgl_plugins_lists_the_installed_distribution_and_its_registrations(fixture_site: Path) -> None:
    result = run_sgl(fixture_site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plugins = {p["name"]: p for p in report["plugins"]}
    assert plugins["fixture"] == {
        "name": "fixture",
        "module": "sgl_fixture_plugin.hooks",
        "distribution": "sgl-fixture-plugin",
        "version": "0.0.1",
    }
    assert plugins["xpu_cpu"]["distribution"] == "sgl", "in-tree plugins must still be found beside it"
    platforms = {p["name"]: p for p in report["platforms"]}
    assert platforms["fixture_cpu"]["available"] is True and platforms["fixture_cpu"]["plugin"] == "fixture"
    assert {"name": "FixtureForCausalLM", "plugin": "fixture"} in report["models"]
    assert report["active_platform"]["name"] != "fixture_cpu", (
        "a high probe_priority platform must never be picked unasked"
    )


def test_sgl_plugins_backend_flag_makes_the_fixture_platform_active(fixture_site: Path) -> None:
    result = run_sgl(fixture_site, "plugins", "--backend", "fixture_cpu")
    assert result.returncode == 0, result.stderr
    assert "Active platform: fixture_cpu (device type cpu, dist backend gloo)" in result.stdout
    plugin_lines = [line for line in result.stdout.splitlines() if "sgl_fixture_plugin.hooks" in line]
    assert plugin_lines and "sgl-fixture-plugin 0.0.1" in plugin_lines[0]


SELECT_AND_CALL = """
    import json
    import torch
    from sgl.core.ops import reference
    from sgl.core.plugins import select_platform
    import sgl_fixture_plugin.platform as fixture

    named = select_platform("fixture_cpu")
    from_env = select_platform()  # SGL_BACKEND is set by the test
    x, w = torch.randn(3, 8), torch.rand(8) + 0.5
    before = fixture.rms_norm_calls
    out = named.ops().rms_norm(x, w, 1e-6)
    print(json.dumps({
        "named": type(named).__name__,
        "from_env": type(from_env).__name__,
        "calls": fixture.rms_norm_calls - before,
        "matches_reference": torch.equal(out, reference.rms_norm(x, w, 1e-6)),
        "other_ops_are_reference": named.ops().silu_and_mul is reference.silu_and_mul,
    }))
"""


def test_selected_fixture_platform_ops_run_the_counting_override(fixture_site: Path) -> None:
    got = run_python(fixture_site, SELECT_AND_CALL, SGL_BACKEND="fixture_cpu")
    assert got == {
        "named": "FixtureCpuPlatform",
        "from_env": "FixtureCpuPlatform",
        "calls": 1,
        "matches_reference": True,
        "other_ops_are_reference": True,
    }


FORWARD_WITH_FIXTURE_PLATFORM = """
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[2])  # tests/core, for the tiny_models helper
    from tiny_models import build_forward_batch, make_paged_kv
    from sgl.core.model.context import ModelContext
    from sgl.core.model.loader import load_model
    from sgl.core.plugins import select_platform
    import sgl_fixture_plugin.platform as fixture

    platform = select_platform("fixture_cpu")
    ctx = ModelContext.from_platform(platform, torch.float32)
    model, config = load_model(sys.argv[1], ctx, load_format="dummy")
    paged = make_paged_kv(config)
    row = paged.req_to_token_pool.alloc()
    fb = build_forward_batch(paged, [row], [0], [[3, 17, 5, 9, 11]])
    before = fixture.rms_norm_calls
    with torch.no_grad():
        hidden = model(fb.input_ids, fb.positions, fb)
    print(json.dumps({
        "class": type(model).__name__,
        "calls": fixture.rms_norm_calls - before,
        "shape": list(hidden.shape),
        "finite": bool(torch.isfinite(hidden).all()),
    }))
"""

TINY_FIXTURE_CONFIG = {
    "architectures": ["FixtureForCausalLM"],
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def test_model_built_on_fixture_platform_calls_its_override_during_forward(
    fixture_site: Path, tmp_path: Path
) -> None:
    pytest.importorskip("sgl.core.model.loader")
    (tmp_path / "config.json").write_text(json.dumps(TINY_FIXTURE_CONFIG))
    got = run_python(fixture_site, FORWARD_WITH_FIXTURE_PLATFORM, str(tmp_path), str(TESTS_CORE))
    assert got["class"] == "FixtureForCausalLM"
    assert got["shape"] == [5, TINY_FIXTURE_CONFIG["hidden_size"]]
    assert got["finite"] is True
    assert isinstance(got["calls"], int) and got["calls"] >= 1, (
        "the model never called the platform's rms_norm"
    )
