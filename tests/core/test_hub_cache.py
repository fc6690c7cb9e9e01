"""Hub ids through the real huggingface_hub, offline, over a cache laid out by the test: the branch or the
--revision picks the snapshot, sgl.Engine serves it, and an id that is not cached fails with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sgl.core.demo_model import write_demo_model
from tests.core.hub_cache import make_hub_cache, offline_env

# NOTE: a fresh interpreter per check: huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE when it is imported.
SCRIPT = """
import json, sys
import sgl
from sgl.core.config import ServerArgs
from sgl.core.model.source import resolve_paths

out = {ref: resolve_paths(ServerArgs(model_path="org/tiny", revision=rev)).model_path
       for ref, rev in (("main", None), ("v2", "v2"))}
params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}

def tokens(**kwargs):
    engine = sgl.Engine(backend="cpu", max_total_tokens=2048, context_length=256, **kwargs)
    try:
        return engine.generate("The quick brown fox", params)["output_ids"]
    finally:
        engine.shutdown()

out["hub_v2"] = tokens(model_path="org/tiny", revision="v2")
out["dir_v2"] = tokens(model_path=sys.argv[1])
out["dir_main"] = tokens(model_path=sys.argv[2])
print("RESULT=" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("hub")
    other = write_demo_model(root / "seed1", seed=1, num_layers=1)
    return root / "cache", make_hub_cache(root / "cache", "org/tiny", {"main": demo_model_dir, "v2": other})


def _run(cache: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, env=offline_env(cache),
                          check=False)


def test_engine_serves_the_snapshot_of_the_revision_it_is_given(
    hub: tuple[Path, dict[str, Path]], demo_model_dir: Path
) -> None:
    cache, snapshots = hub
    result = _run(cache, "-c", SCRIPT, str(snapshots["v2"]), str(demo_model_dir))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.split("RESULT=")[-1])
    assert out["main"] == str(snapshots["main"]) and out["v2"] == str(snapshots["v2"])
    assert out["hub_v2"] == out["dir_v2"] != out["dir_main"]


def test_serve_with_an_uncached_hub_id_offline_exits_2_with_one_line(hub: tuple[Path, dict[str, Path]]) -> None:
    cache, _ = hub
    result = _run(cache, "-m", "sgl.cli", "serve", "--model-path", "org/absent", "--revision", "v9")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: org/absent@v9 is not in the Hugging Face cache")
    assert "Traceback" not in result.stderr
