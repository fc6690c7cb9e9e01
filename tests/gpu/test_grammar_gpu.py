"""Constrained decoding on a real GPU: the mask moves asynchronously and sampling is deferred under overlap."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a GPU", allow_module_level=True)
pytest.importorskip("xgrammar")

import sgl

pytestmark = pytest.mark.gpu

REGEX = r"[a-z]{3,6}( [a-z]{2,5}){2,4}\."
CHOICES = ["alpha beta", "gamma", "delta epsilon"]


def test_constrained_outputs_identical_with_overlap_on_and_off_on_gpu(demo_model_dir: Path) -> None:
    params = [{"temperature": 0.0, "max_new_tokens": 48, "regex": REGEX},
              {"temperature": 0.0, "max_new_tokens": 48, "ignore_eos": True},
              {"temperature": 0.0, "max_new_tokens": 48, "choices": CHOICES}] * 6
    prompts = [f"Prompt {i}:" for i in range(len(params))]
    outs = {}
    for overlap_off in (True, False):
        with sgl.Engine(model_path=str(demo_model_dir), backend="cuda", dtype="float32", max_total_tokens=16384,
                        context_length=2048, disable_overlap_schedule=overlap_off, debug_invariants=True) as e:
            outs[overlap_off] = [(o["text"], o["output_ids"], o["meta_info"]["finish_reason"]["type"])
                                 for o in e.generate(prompts, params)]
            info = e.get_server_info()
            assert (info["overlapped_steps"] > 0) != overlap_off
    assert outs[False] == outs[True]
    assert any(reason == "stop" for _, _, reason in outs[False])
    for (text, _, reason), p in zip(outs[False], params):
        if reason != "stop":
            continue  # the budget ran out mid-grammar: a prefix of a valid output
        if "regex" in p:
            assert re.fullmatch(REGEX, text), text
        elif "choices" in p:
            assert text in CHOICES
