"""Non-streaming requests whose client went away are aborted too, so their KV is freed at once.

(Streaming responses already abort on disconnect: closing the SSE generator closes the RequestManager's.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from starlette.responses import Response

T = TypeVar("T")

POLL_S = 0.25
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but logs say what happened


async def abort_on_disconnect(request: Request, work: Awaitable[T]) -> T | Response:
    """Awaits ``work``; if the client disconnects first, cancels it (its generator then sends AbortReq)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return Response(status_code=CLIENT_CLOSED)
    finally:
        if not task.done():
            task.cancel()
