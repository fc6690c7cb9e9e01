"""sgl's LoRA backends beside speculative decoding: refused at startup with one line, since a verify forward (and its
graphs) does not carry the batch's adapter segments yet and would verify against the base model. (A third party's
backend decides for itself: tests/core/test_third_party_plugin.py runs the fixture's LoRA beside its speculation.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.engine_utils import make_engine


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_lora_with_speculative_decoding_is_refused_with_one_line(demo_model_dir: Path, backend: str) -> None:
    with pytest.raises(ValueError, match="--enable-lora with --speculative-algorithm is not supported yet"):
        make_engine(demo_model_dir, enable_lora=True, lora_backend=backend, speculative_algorithm="NGRAM").shutdown()
