"""The garbage collector held off while a graph is captured (decode graphs and verify graphs alike)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection while capturing: a collection could free an earlier engine's graphs or device
    tensors mid-capture, a device call that a capture forbids (it fails later, at an innocent line, with "operation
    failed due to a previous error during capture"). What is garbage now is collected first."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
