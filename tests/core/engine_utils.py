"""Helpers for engine tests: build engines on the CPU with invariant checks on, run greedy batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sgl

GREEDY = {"temperature": 0.0, "max_new_tokens": 32, "ignore_eos": True}


def make_engine(model: Path | str, **kwargs: Any) -> sgl.Engine:
    kwargs.setdefault("backend", "cpu")
    kwargs.setdefault("debug_invariants", True)
    kwargs.setdefault("max_total_tokens", 8192)
    kwargs.setdefault("context_length", 1024)
    return sgl.Engine(model_path=str(model), **kwargs)


def greedy_ids(engine: sgl.Engine, prompts: list[str], params: dict[str, Any] | None = None) -> list[list[int]]:
    outs = engine.generate(prompts, dict(params or GREEDY))
    return [o["output_ids"] for o in outs]


PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived a",
    "def fibonacci(n):",
    "Numbers: 1, 2, 3, 4, 5, 6, 7,",
    "Le café était très",
    "In the beginning the universe was created. This has made a lot of people very angry and been widely regarded as",
]
