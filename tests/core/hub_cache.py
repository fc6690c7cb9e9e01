"""A Hugging Face Hub cache laid out by the test, as huggingface_hub writes it, so Hub ids resolve with no network:
``models--org--name/snapshots/<commit>/<files>`` and ``refs/<branch>`` holding the commit."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path


def make_hub_cache(cache: Path, repo_id: str, refs: Mapping[str, Path]) -> dict[str, Path]:
    """Puts each ref's model directory into ``cache`` as a snapshot of ``repo_id``; returns ref -> snapshot dir."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshots: dict[str, Path] = {}
    for ref, source in refs.items():
        commit = hashlib.sha1(f"{repo_id}@{ref}".encode()).hexdigest()  # 40 hex digits, like a git commit
        snapshot = repo / "snapshots" / commit
        shutil.copytree(source, snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        snapshots[ref] = snapshot
    return snapshots


def offline_env(cache: Path) -> dict[str, str]:
    """The environment of a process that may only use ``cache``: no Hub requests, no token, no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    return {**env, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
