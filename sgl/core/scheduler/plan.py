"""One planning function for both loops: what the next step runs, and how a step runs when nothing overlaps it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.decode import DecodeRuns, schedule_decode
from sgl.core.scheduler.prefill import PrefillBuilder
from sgl.core.scheduler.results import ResultProcessor
from sgl.core.scheduler.state import SchedulerState
from sgl.core.scheduler.step import StepExecutor
from sgl.core.scheduler.step_failure import fail_batches
from sgl.core.speculative.gate import PLAIN, SPECULATE, SpeculationGate

if TYPE_CHECKING:
    from sgl.core.scheduler.req import Req
    from sgl.core.speculative.base import SpeculativeAlgorithm


def plan_step(state: SchedulerState, prefill: PrefillBuilder, runs: DecodeRuns | None = None) -> ScheduleBatch | None:
    """A prefill when one fits (it may mix in the running decodes), else the running batch's decode (a run of
    steps where ``runs`` allows), else None."""
    batch = prefill.schedule()
    if batch is None and state.running:
        batch = schedule_decode(state, runs)
    return batch


def run_step(
    batch: ScheduleBatch, state: SchedulerState, executor: StepExecutor, results: ResultProcessor,
    speculative: SpeculativeAlgorithm | None = None, gate: SpeculationGate | None = None,
    drafting: bool | None = None,
) -> None:
    """Runs ``batch`` to its sampled tokens and applies them (the plain loop; overlap for prefills and for the
    decode steps that draft).

    With a speculative algorithm, a decode step is its ``decode_step`` (drafts verified, several tokens accepted per
    request) unless it has no drafts to verify, or the ``gate`` measured that plain steps deliver more tokens per
    second at this batch size; ``drafting`` is the gate's pick when the caller already asked it."""
    state.counters.steps += 1
    if batch.mode.is_decode:
        for r in batch.reqs:
            r.inflight += batch.steps
        if speculative is not None:
            count_verify(batch.reqs)
        # NOTE: with speculation decode runs are off (Scheduler), so a speculative decode batch is one step
        size = len(batch.reqs)
        if drafting is None:
            drafting = speculative is not None and (gate is None or gate.choose(size) == SPECULATE)
        start = time.perf_counter()
        verified = speculative.decode_step(batch, state, executor) if drafting else None  # type: ignore[union-attr]
        if verified is not None:
            results.process_verify(batch, verified)
            if gate is not None:  # NOTE: the results were read on the host, so the step's device work is done
                gate.record(size, SPECULATE, sum(map(len, verified.tokens)), time.perf_counter() - start)
            return
    # NOTE: a forward or sampling that raises fails this batch's requests (500), not the server
    try:
        result = executor.execute(batch)
    except Exception as exc:  # noqa: BLE001 - reported to each request of the batch
        fail_batches([batch], state, exc)
        return
    if batch.mode.is_decode:
        results.process_decode(batch, result)
        if gate is not None and speculative is not None:
            gate.record(size, PLAIN, size * batch.steps, time.perf_counter() - start)
    else:
        results.process_extend(batch, result)


def count_verify(reqs: list[Req]) -> None:
    """Counts a decode forward under speculation in each request's ``spec_verify_ct`` (SGLang's name: the gate's
    plain steps count too, so completion tokens over it stay the tokens per forward)."""
    for r in reqs:
        r.spec_verify_ct = (r.spec_verify_ct or 0) + 1
