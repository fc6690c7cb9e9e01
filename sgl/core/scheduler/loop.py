"""The scheduler's event loop: drain messages, step, send outputs. The same loop runs in a thread or a process."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from sgl.core.ipc import (
    AbortReq,
    FeatureCallReq,
    FlushCacheReq,
    FlushCacheResp,
    GenerateReq,
    GetInfoReq,
    InfoResp,
    SchedulerFailed,
    ShutdownReq,
)
from sgl.core.scheduler.scheduler import Scheduler

logger = logging.getLogger(__name__)

IDLE_POLL_S = 0.1


def run_scheduler_loop(
    scheduler: Scheduler, recv: Callable[[bool, float], list[Any]], send: Callable[[Any], None],
    on_progress: Callable[[], None] | None = None,
) -> None:
    """Runs until a ShutdownReq arrives. ``recv(block, timeout)`` returns the messages that are ready.

    NOTE: an exception in a step is reported as SchedulerFailed and ends the loop: the front fails every pending
    request with the message instead of hanging.
    """
    try:
        while True:
            msgs = recv(scheduler.is_idle, IDLE_POLL_S)
            for msg in msgs:
                if isinstance(msg, GenerateReq):
                    scheduler.add_request(msg)
                elif isinstance(msg, AbortReq):
                    scheduler.abort(msg.rid)
                elif isinstance(msg, GetInfoReq):
                    send(InfoResp(msg.token, scheduler.info()))
                elif isinstance(msg, FlushCacheReq):
                    ok = scheduler.flush_cache()
                    send(FlushCacheResp(ok, "" if ok else "requests are running; the cache was not flushed"))
                elif isinstance(msg, FeatureCallReq):
                    send(InfoResp(msg.token, scheduler.call_feature(msg.feature, msg.method, msg.kwargs)))
                elif isinstance(msg, ShutdownReq):
                    return
            news = scheduler.step()
            if news:
                send(news)
            if on_progress is not None:
                on_progress()
    except Exception as exc:  # noqa: BLE001  (the loop must report, not vanish)
        logger.error("scheduler failed:\n%s", traceback.format_exc())
        send(SchedulerFailed(f"scheduler failed: {type(exc).__name__}: {exc}"))
    finally:
        scheduler.close()
