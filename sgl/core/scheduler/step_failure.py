"""A step whose forward or sampling raised: its requests end with a 500 that names the error; the server goes on.

The KV slots the failed step was writing hold nothing to trust, so they are freed, never cached; what the requests
computed in earlier steps is released the usual way (``SchedulerState.finish``), so the pool's invariant holds and
the next requests are served.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence

from sgl.core.ipc import FinishReason
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.req import Req
from sgl.core.scheduler.state import SchedulerState

logger = logging.getLogger(__name__)

STEP_FAILED_STATUS = 500


def fail_batches(batches: Sequence[ScheduleBatch], state: SchedulerState, exc: BaseException) -> None:
    """Ends every request of ``batches`` (launched, none resolved; overlap may chain two) with an error naming
    ``exc``. A request in two chained batches owns the slots of both, after its trusted ``kv_len``."""
    message = f"the model step failed: {type(exc).__name__}: {exc}"
    logger.error("%s; failing the requests of %d batch(es)\n%s", message, len(batches),
                 "".join(traceback.format_exception(exc)))
    trusted: dict[str, tuple[Req, int]] = {}
    for batch in batches:
        for i, r in enumerate(batch.reqs):
            trusted.setdefault(r.rid, (r, r.kv_len))
            # NOTE: the slots a step was given belong to the request until dropped (the ledger counts them)
            if batch.mode.is_decode:
                r.kv_len += batch.steps
                r.inflight -= batch.steps
            else:
                r.kv_len += batch.extend_lens[i]
    for r, kv_len in trusted.values():
        state.drop_kv_after(r, kv_len)
        if r.finished:
            if r.release_deferred and not r.inflight:
                state.release(r)
            continue
        r.finished_reason = FinishReason("abort", message=message, status_code=STEP_FAILED_STATUS)
        state.finish(r)
