"""CPU work of one request (chat templating, tokenizing, (de)serializing) that is long enough to stall the event
loop runs on a small thread pool instead, so /health and every other request keep being answered meanwhile.

NOTE: this helps only because the long parts release the GIL: Tokenizer.encode does for long texts; a template is
Python, which yields the GIL every few milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Below this many characters (or token ids) the work takes well under a millisecond or two: a thread hop costs more.
OFFLOAD_MIN_SIZE = 16384
_WORKERS = 4

_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="sgl-offload")
    return _executor


async def offload(fn: Callable[[], T], size: int) -> T:
    """``fn()``, inline when ``size`` is small, else on the offload pool (its exceptions propagate as raised)."""
    if size < OFFLOAD_MIN_SIZE:
        return fn()
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn)
