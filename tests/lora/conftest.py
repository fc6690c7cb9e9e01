"""LoRA tests: the demo model's adapters, made with peft once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lora.peft_adapters import make_peft_adapter



@pytest.fixture(scope="session")
def adapters(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three adapters on the demo model: rank 4 on every projection, rank 16 with rsLoRA on attention only, and
    rank 8 on the MLP only."""
    pytest.importorskip("peft")  # NOTE: here, not at collection: peft imports triton, which must see TRITON_INTERPRET
    root = tmp_path_factory.mktemp("adapters")
    return {
        "r4": make_peft_adapter(demo_model_dir, root / "r4", rank=4, seed=1),
        "r16": make_peft_adapter(demo_model_dir, root / "r16", rank=16, seed=2, use_rslora=True, scale=0.05,
                                 target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
        "mlp8": make_peft_adapter(demo_model_dir, root / "mlp8", rank=8, seed=3,
                                  target_modules=("gate_proj", "up_proj", "down_proj")),
    }
