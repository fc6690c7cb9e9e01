"""The demo model: deterministic, loadable by transformers, and not degenerate."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from sgl.core import demo_model
from sgl.core.demo_model import (
    EOS_TOKEN,
    EOT_TOKEN,
    default_demo_model_dir,
    ensure_demo_model,
    train_demo_tokenizer,
    write_demo_model,
)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("demo") / "model")


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_seed_gives_byte_identical_files(demo_dir: Path, tmp_path: Path) -> None:
    again = write_demo_model(tmp_path / "again")
    assert _file_bytes(again) == _file_bytes(demo_dir)


def test_other_seed_changes_weights_but_not_tokenizer(demo_dir: Path, tmp_path: Path) -> None:
    other = _file_bytes(write_demo_model(tmp_path / "seed1", seed=1))
    base = _file_bytes(demo_dir)
    assert other["model.safetensors"] != base["model.safetensors"]
    assert other["tokenizer.json"] == base["tokenizer.json"]


def test_tokenizer_training_is_fast_deterministic_and_fills_the_vocab() -> None:
    start = time.perf_counter()
    first = train_demo_tokenizer(2048)
    assert time.perf_counter() - start < 3.0
    assert first.to_str() == train_demo_tokenizer(2048).to_str()
    assert first.get_vocab_size(with_added_tokens=True) == 2048
    # Any UTF-8 text encodes (byte-level), and special tokens sit at the end of the vocabulary as in Llama 3.
    text = "naïve 中文 🎉 \x00\t"
    assert first.decode(first.encode(text, add_special_tokens=False).ids) == text
    assert first.token_to_id(EOT_TOKEN) >= 2048 - len(demo_model.SPECIAL_TOKENS)


def test_config_describes_small_llama_with_two_eos_ids(demo_dir: Path) -> None:
    config = json.loads((demo_dir / "config.json").read_text())
    gen = json.loads((demo_dir / "generation_config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 32)
    assert config["torch_dtype"] == "float32" and config["vocab_size"] == 2048
    assert isinstance(gen["eos_token_id"], list) and len(set(gen["eos_token_id"])) == 2
    tok = json.loads((demo_dir / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert gen["eos_token_id"] == [ids[EOS_TOKEN], ids[EOT_TOKEN]]


def test_transformers_loads_weights_with_no_missing_or_unexpected_keys(demo_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model, info = transformers.LlamaForCausalLM.from_pretrained(demo_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 128


def test_greedy_output_is_not_one_repeated_token(demo_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM.from_pretrained(demo_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(demo_dir)
    ids = torch.tensor([tok("The lighthouse keeper climbed the steps").input_ids])
    with torch.no_grad():
        for _ in range(16):
            nxt = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    generated = ids[0, -16:].tolist()
    assert len(set(generated)) >= 8, generated


def test_rewrite_keeps_a_current_model_and_replaces_a_stale_one(tmp_path: Path) -> None:
    path = write_demo_model(tmp_path / "m", num_layers=1)
    stamp = path / "sgl_demo.json"
    mtime = stamp.stat().st_mtime_ns
    assert write_demo_model(path, num_layers=1) == path and stamp.stat().st_mtime_ns == mtime
    write_demo_model(path, num_layers=2)
    assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or trash directories left behind


def test_concurrent_writers_leave_one_complete_model(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def write() -> None:
        try:
            write_demo_model(tmp_path / "shared", num_layers=1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _file_bytes(tmp_path / "shared") == _file_bytes(write_demo_model(tmp_path / "solo", num_layers=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared", "solo"]


def test_ensure_demo_model_uses_sgl_cache_dir_and_creates_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGL_CACHE_DIR", str(tmp_path))
    assert default_demo_model_dir() == tmp_path / "demo-model"
    path = ensure_demo_model()
    assert path == tmp_path / "demo-model" and (path / "model.safetensors").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_model() == path and (path / "model.safetensors").stat().st_mtime_ns == mtime
    monkeypatch.delenv("SGL_CACHE_DIR")
    assert default_demo_model_dir() == Path.home() / ".cache" / "sgl" / "demo-model"
