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


def plain_greedy_ids(model: Path | str, prompts: list[str], params: dict[str, Any] | None = None,
                     **kwargs: Any) -> list[list[int]]:
    """The oracle of the optimisation tests: ``prompts``' tokens from a fresh engine with the defaults (plus
    ``kwargs``), shut down after."""
    engine = make_engine(model, **kwargs)
    try:
        return greedy_ids(engine, prompts, params)
    finally:
        engine.shutdown()


PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived a",
    "def fibonacci(n):",
    "Numbers: 1, 2, 3, 4, 5, 6, 7,",
    "Le café était très",
    "In the beginning the universe was created. This has made a lot of people very angry and been widely regarded as",
]


def settled_info(engine: sgl.Engine, timeout: float = 10.0) -> dict[str, Any]:
    """Server info once the scheduler holds (and locks) no request's KV.

    NOTE: under overlap a request that finished at step N rides along in the chained step N+1, whose KV is released
    when N+1 resolves, which may be just after the caller heard of the finish.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        info = engine.get_server_info()
        settled = info["request_owned_tokens"] == 0 and info["locked_tokens"] == 0 and info["num_running_reqs"] == 0
        if settled or time.monotonic() > deadline:
            return info
        time.sleep(0.01)
