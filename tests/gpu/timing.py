"""Device time of a callable by CUDA events: the GPU tests' one timing loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def event_ms(fn: Callable[[], Any], iters: int = 50, warmup: int = 0) -> float:
    """Milliseconds per call of ``fn`` between two CUDA events over ``iters`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) / iters
