"""LoRA beside speculative decoding: refused at startup with one line, since a verify forward (and its graphs) does
not carry the batch's adapter segments yet and would verify against the base model."""

from __future__ import annotations

import pytest

from sgl.core.config import ServerArgs


def test_lora_with_speculative_decoding_is_refused_with_one_line() -> None:
    with pytest.raises(ValueError, match="--enable-lora with --speculative-algorithm is not supported yet"):
        ServerArgs(model_path="m", enable_lora=True, speculative_algorithm="NGRAM")
    with pytest.raises(ValueError, match="not supported yet"):  # any LoRA flag turns LoRA on
        ServerArgs(model_path="m", lora_paths=["a=/x"], speculative_algorithm="EAGLE")
    ServerArgs(model_path="m", speculative_algorithm="NGRAM")  # either alone is fine
    ServerArgs(model_path="m", enable_lora=True)
