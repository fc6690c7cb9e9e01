"""Shipped configs of real architectures, materialised as model directories for ``--load-format dummy`` runs.

``--model-path llama-3.1-8b`` names ``configs/llama-3.1-8b.json``; this writes a directory holding that config.json
and the demo tokenizer (benchmarks send token ids, so the tokenizer only has to load, not to match the real model's
vocabulary). ``sgl serve``, ``sgl.Engine`` and ``sgl bench`` resolve the names alike (``model.source``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from sgl.core import env
from sgl.core.config import ServerArgs
from sgl.core.model.hub import ModelSourceError

_STAMP = "sgl_bench_model.json"


def shipped_configs() -> list[str]:
    """Names accepted by ``--model-path`` besides directories."""
    folder = resources.files("sgl.core.model").joinpath("configs")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def _config_text(name: str) -> str:
    return resources.files("sgl.core.model").joinpath(f"configs/{name}.json").read_text(encoding="utf-8")


def _cache_root() -> Path:
    root = env.CACHE_DIR.get()
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "sgl") / "bench-models"


def _write(out: Path, name: str, config_text: str) -> None:
    from sgl.core.demo_model import BOS_TOKEN, EOS_TOKEN, train_demo_tokenizer

    (out / "config.json").write_text(config_text, encoding="utf-8")
    train_demo_tokenizer().save(str(out / "tokenizer.json"))
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    (out / _STAMP).write_text(json.dumps({"name": name, "config": config_text}) + "\n", encoding="utf-8")


def _is_current(path: Path, name: str, config_text: str) -> bool:
    stamp = path / _STAMP
    if not stamp.is_file():
        return False
    try:
        return bool(json.loads(stamp.read_text(encoding="utf-8")) == {"name": name, "config": config_text})
    except ValueError:
        return False


def materialize(name: str) -> Path:
    """The directory for a shipped config, written once (in one rename) and rewritten when the config changes."""
    if name not in shipped_configs():
        raise ModelSourceError(f"no shipped config {name!r}; known: {', '.join(shipped_configs())}")
    text = _config_text(name)
    target = _cache_root() / name
    if _is_current(target, name, text):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
    try:
        _write(tmp, name, text)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_current(target, name, text):  # NOTE: a concurrent writer with identical files is fine
                raise
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_shipped(args: ServerArgs, require_dummy: bool = True) -> ServerArgs:
    """Replaces a shipped config's name in ``--model-path`` by its directory; such a model needs dummy weights.

    ``require_dummy`` is off only where no model is loaded here (a client reading the vocabulary size).
    """
    path = args.model_path
    if path is None or os.path.isdir(path) or path not in shipped_configs():
        return args
    if require_dummy and args.load_format != "dummy":
        raise ModelSourceError(f"--model-path {path} is a shipped config without weights: add --load-format dummy")
    return args.replace(model_path=str(materialize(path)))
