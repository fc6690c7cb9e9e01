"""A step whose forward or sampling raised: its requests end with a 500 that names the error; the server goes on.

The KV slots the failed step was writing hold nothing to trust, so they are freed, never cached; what the requests
computed in earlier steps is released the usual way (``SchedulerState.finish``), so the pool's invariant holds and
the next requests are served.
"""

from __future__ import annotations

import logging
import traceback

from sgl.core.ipc import FinishReason
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.state import SchedulerState

logger = logging.getLogger(__name__)

STEP_FAILED_STATUS = 500


def fail_batch(batch: ScheduleBatch, state: SchedulerState, exc: BaseException) -> None:
    """Ends every request of ``batch`` (launched, not resolved) with an error naming ``exc``."""
    message = f"the model step failed: {type(exc).__name__}: {exc}"
    logger.error("%s; failing %d request(s) of this %s batch\n%s", message, len(batch.reqs),
                 batch.mode.name.lower(), "".join(traceback.format_exception(exc)))
    for i, r in enumerate(batch.reqs):
        trusted = r.kv_len
        # NOTE: the slots this step was given belong to the request until dropped (the ledger counts them)
        if batch.mode.is_decode:
            r.kv_len += batch.steps
            r.inflight -= batch.steps
        else:
            r.kv_len += batch.extend_lens[i]
        state.drop_kv_after(r, trusted)
        if r.finished:
            if r.release_deferred and not r.inflight:
                state.release(r)
            continue
        r.finished_reason = FinishReason("abort", message=message, status_code=STEP_FAILED_STATUS)
        state.finish(r)
