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


def _help(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sgl.cli", *args, "--help"], check=False, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "220", "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_shows_no_bool_noise_and_keeps_bracketed_text() -> None:
    import dataclasses

    from sgl.core.config import ServerArgs
    from sgl.core.sglang_flags import SGLANG_FLAGS

    serve, root, bench = _help("serve"), _help(), _help("bench", "offline")
    for text in (serve, root, bench):
        assert "<bool>" not in text
    assert "[len * ratio, len]" in bench and "[random|shared-prefix]" in bench
    for f in dataclasses.fields(ServerArgs):
        if f.metadata.get("cli", True):  # plugin_args: no flag of its own, each plugin's options are
            assert "--" + f.name.replace("_", "-") in serve, f.name
    for flag in SGLANG_FLAGS.values():
        assert flag.flag in serve and flag.help[:40] in serve, flag.name
    assert "--device" in serve and "--tensor-parallel-size" in serve


def _parsed(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, list[object]]:
    """Runs ``sgl serve ARGV`` up to the server: what reached it, without starting one."""
    from typer.testing import CliRunner

    import sgl.api.server
    from sgl.cli import app

    seen: list[object] = []
    monkeypatch.setattr(sgl.api.server, "serve", lambda args: seen.append(args) or 0)
    result = CliRunner().invoke(app, ["serve", *argv])
    return result.exit_code, result.output, seen


def test_an_sglang_launch_script_reaches_the_server_with_its_values(
    demo_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages[0]['content'] }}")
    argv = [
        "--model-path", str(demo_model_dir), "--host", "0.0.0.0", "--port", "30001", "--device", "cpu",
        "--tp-size", "1", "--dp", "1", "--trust-remote-code", "--enable-metrics", "--dtype", "half",
        "--kv-cache-dtype", "fp8_e4m3", "--mem-fraction-static", "0.8", "--max-running-requests", "64",
        "--max-total-tokens", "4096", "--chunked-prefill-size", "2048", "--max-prefill-tokens", "8192",
        "--schedule-policy", "fcfs", "--schedule-conservativeness", "0.5", "--context-length", "1024",
        "--served-model-name", "my-model", "--random-seed", "42", "--log-level", "warning", "--api-key", "k",
        "--watchdog-timeout", "60", "--log-requests", "--disable-radix-cache", "--enable-mixed-chunk",
        "--cuda-graph-max-bs", "8", "--disable-cuda-graph", "--attention-backend", "torch_native",
        "--grammar-backend", "none", "--hf-chat-template-name", str(template), "--stream-interval", "1",
        "--skip-server-warmup", "--enable-cache-report", "--tokenizer-mode", "auto",
    ]
    code, output, seen = _parsed(argv, monkeypatch)
    assert code == 0, output
    [args] = seen
    expected = {
        "model_path": str(demo_model_dir), "host": "0.0.0.0", "port": 30001, "backend": "cpu", "dtype": "float16",
        "kv_cache_dtype": "fp8_e4m3", "mem_fraction_static": 0.8, "max_running_requests": 64,
        "max_total_tokens": 4096, "chunked_prefill_size": 2048, "max_prefill_tokens": 8192,
        "schedule_policy": "fcfs", "schedule_conservativeness": 0.5, "context_length": 1024,
        "served_model_name": "my-model", "random_seed": 42, "log_level": "warning", "api_key": "k",
        "watchdog_timeout": 60.0, "log_requests": True, "disable_radix_cache": True, "enable_mixed_chunk": True,
        "cuda_graph_max_bs": 8, "disable_cuda_graph": True, "attention_backend": "torch_native",
        "grammar_backend": "none", "chat_template": str(template),
    }
    assert {k: getattr(args, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--pp", "2"], "error: --pp-size 2: pipeline parallelism is not supported yet"),
        (["--ep-size", "4"], "error: ep_size must be 1 or tp_size (1): expert parallel rides the tensor-parallel group"),
        (["--tp", "3", "--nnodes", "2", "--dist-init-addr", "127.0.0.1:5000"],
         "error: tp_size (3) must be a multiple of nnodes (2): every node runs the same number of ranks"),
        (["--lora-eviction-policy", "fifo"],
         "error: --lora-eviction-policy fifo: LoRA eviction policies other than LRU are not supported yet (issue 15)"),
        (["--speculative-token-map", "map.pt"],
         "error: --speculative-token-map map.pt: EAGLE token maps are not supported yet (issue 22)"),
        (["--enable-torch-compile"], "error: --enable-torch-compile: torch.compile is not supported yet"),
        (["--stream-interval", "0"], "error: stream_interval must be >= 1"),
        (["stray"], "error: unexpected argument(s): stray"),
        (["--dtype", "fp64"], "error: dtype must be one of auto, float32, bfloat16, float16, half, float; got 'fp64'"),
    ],
    ids=["pp", "ep-over-tp", "tp-over-nodes", "lora-eviction", "speculative", "torch-compile", "stream-interval", "stray", "bad-choice"],
)
def test_a_refused_flag_stops_serve_with_one_line(
    argv: list[str], line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output, seen = _parsed(argv, monkeypatch)
    assert (code, output.strip().splitlines(), seen) == (2, [line], [])


def test_sglang_list_valued_lora_flags_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """SGLang's ``--lora-paths a=x b=y`` (values after one flag) and the repeated-flag spelling both parse."""
    code, output, seen = _parsed(["--lora-paths", "a=/x", "b=/y", "--max-lora-rank", "8"], monkeypatch)
    assert code == 0, output
    args = seen[0]
    assert (args.lora_paths, args.max_lora_rank, args.lora_enabled) == (("a=/x", "b=/y"), 8, True)  # type: ignore[attr-defined]
    code, output, seen = _parsed(["--lora-target-modules", "q_proj", "--lora-target-modules", "v_proj"], monkeypatch)
    assert code == 0, output
    assert seen[0].lora_target_modules == ("q_proj", "v_proj")  # type: ignore[attr-defined]


def test_engine_kwargs_take_sglang_spellings_and_refusals() -> None:
    from sgl.core.config import ServerArgs

    args = ServerArgs.from_kwargs(device="cpu", model="m", dtype="float", tp_size=1, enable_metrics=True)
    assert (args.backend, args.model_path, args.dtype) == ("cpu", "m", "float32")
    assert ServerArgs.from_kwargs(backend=None, device="cpu").backend == "cpu"  # sgl.Engine passes backend=None
    with pytest.raises(ValueError, match="give one of backend and device, not both"):
        ServerArgs.from_kwargs(backend="cuda", device="cpu")
    with pytest.raises(ValueError, match=r"^--pp-size 2: pipeline parallelism is not supported yet$"):
        ServerArgs.from_kwargs(pp_size=2)
    assert ServerArgs.from_kwargs(tp=2, dp=3).tp_size * ServerArgs.from_kwargs(tp=2, dp=3).dp_size == 6
    with pytest.raises(ValueError, match=r"^dist_init_addr is needed with nnodes > 1"):
        ServerArgs.from_kwargs(tp_size=2, nnodes=2)
    with pytest.raises(ValueError, match="unknown server argument"):
        ServerArgs.from_kwargs(no_such_flag=1)
