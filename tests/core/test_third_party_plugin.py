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
    assert {"name": "fixture_counting", "plugin": "fixture"} in report["quantization_methods"]
    assert {"name": "fixture_spec", "plugin": "fixture"} in report["speculative_algorithms"]
    assert {"name": "fixture_lora", "plugin": "fixture"} in report["lora_backends"]
    assert {"plugin": "fixture", "options": [
        "--fixture-draft-depth", "--fixture-lora-rank", "--fixture-tag", "--fixture-strict"
    ]} in report["server_args"]
    assert report["active_platform"]["name"] != "fixture_cpu", (
        "a high probe_priority platform must never be picked unasked"
    )


def test_installed_plugin_that_fails_to_import_is_reported_and_skipped(fixture_site: Path) -> None:
    result = run_sgl(fixture_site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (failed,) = report["failed_plugins"]
    assert (failed["name"], failed["distribution"]) == ("fixture_broken", "sgl-fixture-plugin")
    assert "failed to import 'sgl_fixture_plugin.broken': ImportError: sgl_fixture_vendor_lib" in failed["error"]
    assert "fixture_broken" in result.stderr, "the skipped plugin is logged too"
    assert {p["name"] for p in report["plugins"]} >= {"fixture", "xpu_cpu", "core-models"}
    text = run_sgl(fixture_site, "plugins", "--backend", "fixture_cpu")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    at = lines.index("Plugins that failed to load (skipped):")
    assert lines[at + 1].strip().startswith("fixture_broken (sgl-fixture-plugin 0.0.1)")


def test_asking_for_what_the_broken_plugin_would_provide_names_it(fixture_site: Path) -> None:
    result = run_sgl(fixture_site, "plugins", "--backend", "fixture_broken")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: backend 'fixture_broken' is unknown; available here: ")
    assert "plugins that failed to load: 'fixture_broken' (sgl-fixture-plugin)" in last
    assert "Traceback" not in result.stderr


def test_fixture_server_args_appear_in_serve_help_in_their_own_group(fixture_site: Path) -> None:
    result = run_sgl(fixture_site, "serve", "--help", COLUMNS="160")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    start = out.index("Plugin fixture (sgl-fixture-plugin 0.0.1)")
    group = out[start : out.index("╰", start)]  # NOTE: the panel's box ends at its bottom-left corner
    assert "--model-path" not in group and "--fixture-draft-depth" not in out[:start]
    for flag, help_text in [
        ("--fixture-draft-depth", "tokens the fixture's speculative algorithm drafts"),
        ("--fixture-tag", "free text the fixture's features echo back"),
        ("--fixture-strict", "refuse to start unless a tag is given"),
    ]:
        line = next(line for line in group.splitlines() if flag in line)
        assert help_text in line


CLI_PARSE = """
    import json, sys
    from typer.testing import CliRunner
    import sgl.api.server
    from sgl.core.plugin_options import plugin_args
    from sgl_fixture_plugin.args import FixtureArgs

    seen = []
    sgl.api.server.serve = lambda server_args: seen.append(server_args) or 0  # parse only: start nothing
    from sgl.cli import app

    result = CliRunner().invoke(app, ["serve", *sys.argv[1:]])
    options = plugin_args(seen[0], FixtureArgs) if seen else None
    print(json.dumps({
        "exit_code": result.exit_code,
        "output": result.output,
        "type": type(options).__name__,
        "options": repr(options),
        "quantization": seen[0].quantization if seen else None,
    }))
"""


def test_fixture_server_args_reach_the_plugin_typed(fixture_site: Path) -> None:
    got = run_python(
        fixture_site, CLI_PARSE, "--fixture-draft-depth", "5", "--fixture-tag", "hi", "--fixture-strict",
        "--quantization", "fixture_counting",
    )
    assert got["exit_code"] == 0, got["output"]
    assert got["type"] == "FixtureArgs"
    assert got["options"] == "FixtureArgs(draft_depth=5, lora_rank=8, tag='hi', strict=True)"
    assert got["quantization"] == "fixture_counting"
    defaults = run_python(fixture_site, CLI_PARSE)
    assert defaults["options"] == "FixtureArgs(draft_depth=2, lora_rank=8, tag=None, strict=False)"


def test_fixture_options_that_fail_its_own_validation_are_a_one_line_error(fixture_site: Path) -> None:
    got = run_python(fixture_site, CLI_PARSE, "--fixture-draft-depth", "-1")
    assert got["exit_code"] == 2
    assert got["output"].strip() == "error: plugin 'fixture' options: draft_depth must be >= 0, got -1"


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


ENGINE_WITH_FIXTURE_FEATURES = """
    import json, sys
    import sgl
    import sgl_fixture_plugin.quant as quant
    from sgl_fixture_plugin.args import FixtureArgs

    common = dict(model_path=sys.argv[1], backend="cpu", max_total_tokens=2048, context_length=256)
    params = {"temperature": 0.0, "max_new_tokens": 8, "ignore_eos": True}
    prompts = ["The quick brown fox", "Numbers: 1, 2, 3,"]
    plain = sgl.Engine(**common)
    plain_ids = [o["output_ids"] for o in plain.generate(prompts, params)]
    plain.shutdown()
    before = quant.apply_calls
    engine = sgl.Engine(
        **common, quantization="fixture_counting", speculative_algorithm="fixture_spec",
        lora_backend="fixture_lora", plugin_args={"fixture": FixtureArgs(draft_depth=3, tag="t")},
    )
    ids = [o["output_ids"] for o in engine.generate(prompts, params)]
    features = engine.runtime.features
    runner = engine.runtime.scheduler.runner
    print(json.dumps({
        "linear_calls": quant.apply_calls - before,
        "quantization": type(runner.quantization).__name__,
        "same_tokens": ids == plain_ids,
        "speculative": type(features.speculative).__name__,
        "speculative_options": repr(features.speculative.options),
        "speculative_vocab": features.speculative.vocab_size == runner.vocab_size,
        "lora": type(features.lora).__name__,
        "lora_layers": features.lora.num_layers == runner.model_config.num_layers,
        "speculative_calls": dict(features.speculative.calls), "lora_calls": dict(features.lora.calls),
    }))
    engine.shutdown()
"""


def test_fixture_features_chosen_by_flag_are_built_and_its_linear_method_computes(
    fixture_site: Path, demo_model_dir: Path
) -> None:
    got = run_python(fixture_site, ENGINE_WITH_FIXTURE_FEATURES, str(demo_model_dir))
    assert got["quantization"] == "CountingQuantization"
    assert isinstance(got["linear_calls"], int) and got["linear_calls"] > 0, "no layer computed through it"
    assert got["same_tokens"] is True, "the fixture's method is the dense reference: tokens must not change"
    assert got["speculative"] == "FixtureSpeculative" and got["speculative_vocab"] is True
    assert got["speculative_options"] == "FixtureArgs(draft_depth=3, lora_rank=8, tag='t', strict=False)"
    assert got["lora"] == "FixtureLoRA" and got["lora_layers"] is True
    # NOTE: both are scheduler features: every request admitted and released once, every generated token seen
    want = {"admit": 2, "on_token": 16, "release": 2}
    assert got["speculative_calls"] == want and got["lora_calls"] == want


CHECKPOINT_QUANT = """
    import json, sys
    from sgl.core.config import ServerArgs
    from sgl.core.plugins import select_platform
    from sgl.core.runner.model_runner import ModelRunner

    args = ServerArgs(model_path=sys.argv[1], backend="cpu", load_format="dummy", max_total_tokens=512,
                      context_length=128)
    try:
        runner = ModelRunner(args, select_platform("cpu"), sys.argv[1])
        print(json.dumps({"method": type(runner.quantization).__name__, "config": runner.quantization.config}))
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
"""


def _with_quantization_config(demo: Path, dst: Path, config: dict[str, object]) -> Path:
    shutil.copytree(demo, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = config
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_checkpoint_quantization_config_selects_the_fixture_method_without_a_flag(
    fixture_site: Path, demo_model_dir: Path, tmp_path: Path
) -> None:
    config = {"quant_method": "fixture_counting", "note": "from the checkpoint"}
    model = _with_quantization_config(demo_model_dir, tmp_path / "quantized", config)
    assert run_python(fixture_site, CHECKPOINT_QUANT, str(model)) == {"method": "CountingQuantization",
                                                                      "config": config}
    odd = _with_quantization_config(demo_model_dir, tmp_path / "odd", {"quant_method": "fixture_counting", "bits": 3})
    assert run_python(fixture_site, CHECKPOINT_QUANT, str(odd)) == {
        "error": "fixture_counting cannot read quantization_config keys ['bits']"
    }
    unknown = _with_quantization_config(demo_model_dir, tmp_path / "int3", {"quant_method": "int3"})
    error = run_python(fixture_site, CHECKPOINT_QUANT, str(unknown))["error"]
    assert error.startswith("--quantization: unknown quantization method 'int3'; known: ")
    assert "fixture_counting" in error


def test_server_hands_the_plugin_its_typed_options_in_the_scheduler_process(
    fixture_site: Path, demo_model_dir: Path
) -> None:
    """The options cross into the spawned scheduler process: the fixture refuses (strict, no tag) or serves."""
    import httpx
    import openai

    base = ["--model-path", str(demo_model_dir), "--backend", "fixture_cpu", "--max-total-tokens", "2048",
            "--context-length", "256", "--speculative-algorithm", "fixture_spec", "--fixture-draft-depth", "4",
            "--fixture-strict"]
    refused = run_sgl(fixture_site, "serve", *base, "--port", str(_free_port()))
    assert refused.returncode != 0
    assert "the fixture plugin refuses to start without --fixture-tag (got FixtureArgs(draft_depth=4, lora_rank=8, " \
           "tag=None, strict=True))" in refused.stderr + refused.stdout
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgl.cli", "serve", *base, "--fixture-tag", "hi", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(fixture_site), start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        info = httpx.get(f"{url}/get_server_info", timeout=10).json()
        # NOTE: every loaded plugin's options are there (the cuda plugin's --cuda-pdl too); the fixture's as given
        assert info["server_args"]["plugin_args"]["fixture"] == {
            "draft_depth": 4, "lora_rank": 8, "tag": "hi", "strict": True
        }
        assert info["server_args"]["speculative_algorithm"] == "fixture_spec"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        reply = client.completions.create(model="demo", prompt="The quick brown fox", max_tokens=4, temperature=0)
        assert reply.choices[0].text
    finally:
        proc.terminate()
        proc.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"sgl serve exited with {proc.returncode}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"sgl serve was not healthy within {timeout} s")
