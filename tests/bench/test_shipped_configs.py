"""Shipped configs of real architectures become loadable model directories for dummy-weight runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgl.bench.models import workload_vocab
from sgl.core.model.shipped import materialize, shipped_configs
from sgl.core.model.shipped import resolve_shipped as resolve_server_args
from sgl.core.config import ServerArgs
from sgl.core.model.config import ModelConfig
from sgl.core.plugins import get_plugins
from sgl.core.tokenizer.tokenizer import Tokenizer

# Published hyper-parameters: (layers, hidden, heads, kv heads, head_dim, intermediate, vocab, tied).
PUBLISHED = {
    "llama-3.1-8b": (32, 4096, 32, 8, 128, 14336, 128256, False),
    "qwen3-0.6b": (28, 1024, 16, 8, 128, 3072, 151936, True),
    "qwen3-8b": (36, 4096, 32, 8, 128, 12288, 151936, False),
    "qwen3-30b-a3b": (48, 2048, 32, 4, 128, 6144, 151936, False),
    "deepseek-v2-lite": (27, 2048, 16, 16, 128, 10944, 102400, False),
}


def test_every_published_model_is_shipped_with_its_hyper_parameters() -> None:
    assert set(PUBLISHED) <= set(shipped_configs())
    models = get_plugins().models
    for name, expected in PUBLISHED.items():
        cfg = ModelConfig.from_dir(materialize(name))
        got = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
               cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings)
        assert got == expected, name
        assert cfg.architecture in models


def test_materialized_directory_has_a_loadable_tokenizer_and_is_reused() -> None:
    path = materialize("qwen3-0.6b")
    assert Tokenizer.from_dir(path).vocab_size > 256
    stamp = (path / "config.json").stat().st_mtime_ns
    assert materialize("qwen3-0.6b") == path and (path / "config.json").stat().st_mtime_ns == stamp
    assert json.loads((path / "config.json").read_text())["rope_theta"] == 1000000


def test_a_shipped_name_needs_dummy_weights_and_resolves_to_its_directory() -> None:
    with pytest.raises(ValueError, match="--load-format dummy"):
        resolve_server_args(ServerArgs(model_path="llama-3.1-8b"))
    args = resolve_server_args(ServerArgs(model_path="llama-3.1-8b", load_format="dummy"))
    assert args.model_path == str(materialize("llama-3.1-8b"))
    # token ids must be valid for the model (128256) and the small synthetic tokenizer alike
    assert workload_vocab(args) == Tokenizer.from_dir(args.model_path).vocab_size < 128256


def test_directories_and_unknown_names_pass_through_unchanged(tmp_path: object) -> None:
    args = ServerArgs(model_path=str(tmp_path))
    assert resolve_server_args(args) is args
    with pytest.raises(ValueError, match="no shipped config"):
        materialize("gpt-5")


def test_serve_and_engine_resolve_a_shipped_config_name_as_bench_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sgl serve --model-path llama-3.1-8b --load-format dummy`` (issue 23): the name becomes the materialised
    directory in the one place every entry point resolves paths; without dummy weights it is one line, exit 2."""
    import subprocess
    import sys

    from sgl.core.config import ServerArgs
    from sgl.core.model.source import resolve_paths

    monkeypatch.setenv("SGL_CACHE_DIR", str(tmp_path))
    got = resolve_paths(ServerArgs(model_path="qwen3-0.6b", load_format="dummy"))
    assert got.model_path is not None and (Path(got.model_path) / "config.json").is_file()
    assert (Path(got.model_path) / "tokenizer.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "sgl.cli", "serve", "--model-path", "llama-3.1-8b"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --model-path llama-3.1-8b is a shipped config without weights: add --load-format dummy"]
