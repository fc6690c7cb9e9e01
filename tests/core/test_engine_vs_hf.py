"""Greedy generation through the whole engine equals Hugging Face transformers' generate on the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.core.engine_utils import PROMPTS, make_engine
from tests.core.tiny_models import make_tiny_hf_model

transformers = pytest.importorskip("transformers")

NEW = 32


def hf_greedy(model_dir: Path | str, prompt_ids: list[list[int]]) -> list[list[int]]:
    """Greedy decoding with transformers, one full forward per token (no EOS handling: the engine ignores EOS)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    model.eval()
    outs = []
    with torch.no_grad():
        for ids in prompt_ids:
            seq = list(ids)
            for _ in range(NEW):
                logits = model(torch.tensor([seq])).logits[0, -1]
                seq.append(int(logits.argmax()))
            outs.append(seq[len(ids):])
    return outs


def test_demo_model_greedy_matches_transformers(demo_model_dir: Path) -> None:
    with make_engine(demo_model_dir) as engine:
        prompt_ids = [engine.tokenizer.encode(p) for p in PROMPTS]
        got = engine.generate(input_ids=prompt_ids, sampling_params={"temperature": 0, "max_new_tokens": NEW,
                                                                     "ignore_eos": True})
    assert [o["output_ids"] for o in got] == hf_greedy(demo_model_dir, prompt_ids)


@pytest.mark.parametrize("arch", ["llama3", "llama-tied", "mistral", "qwen2", "qwen3"])
def test_tiny_architectures_greedy_match_transformers(tmp_path: Path, demo_model_dir: Path, arch: str) -> None:
    model_dir = make_tiny_hf_model(arch, tmp_path / arch, seed=1)
    g = torch.Generator().manual_seed(3)
    prompt_ids = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 17, 33)]
    with make_engine(model_dir, tokenizer_path=str(demo_model_dir)) as engine:
        got = engine.generate(input_ids=prompt_ids, sampling_params={"temperature": 0, "max_new_tokens": NEW,
                                                                     "ignore_eos": True})
    assert [o["output_ids"] for o in got] == hf_greedy(model_dir, prompt_ids)
