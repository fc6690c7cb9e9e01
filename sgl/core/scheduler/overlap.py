"""Overlap scheduling: the host prepares and launches decode step N+1 while the device still runs step N.

Step N+1 reads N's sampled tokens straight from device memory, so the host never waits between launches; it
resolves N (copies its tokens home, checks stop conditions, streams them) while N+1 runs. A request that turns out
to have finished at N rides along in N+1: its extra token is dropped and its KV released when N+1 resolves.
A prefill that could be admitted now does not chain: that step resolves first, exactly as the plain loop would.
Sampling that needs N's tokens on the host (grammar masks, penalties, min_new_tokens) chains with its sampling
deferred: N+1's forward is launched, N resolves and its tokens are accepted, and only then is N+1 sampled, so
the mask is filled while the device runs N+1's layers.

With a speculative algorithm, a decode step that drafts runs alone (its drafts need every earlier token on the host):
the loop asks the gate before it chains, and where the gate picks a drafting step the chain ends, the step in
flight resolves, and the next step drafts. The gate's plain steps chain like any others, timed from one resolve to
the next, so the gate compares drafting with overlapped plain decoding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.decode import DecodeRuns, decode_batch, needs_host_tokens
from sgl.core.scheduler.feature import SchedulerFeature
from sgl.core.scheduler.plan import count_verify, plan_step, run_step
from sgl.core.scheduler.prefill import PrefillBuilder
from sgl.core.scheduler.results import ResultProcessor
from sgl.core.scheduler.state import SchedulerState
from sgl.core.scheduler.step import Pending, StepExecutor
from sgl.core.scheduler.step_failure import fail_batches
from sgl.core.speculative.gate import PLAIN, SPECULATE, SpeculationGate
from sgl.core.transfer import to_device

if TYPE_CHECKING:
    from sgl.core.speculative.base import SpeculativeAlgorithm


class OverlapLoop:
    """Keeps at most one decode step in flight; same tokens as the plain loop (tests prove it)."""

    def __init__(
        self, state: SchedulerState, prefill: PrefillBuilder, executor: StepExecutor, results: ResultProcessor,
        features: Sequence[SchedulerFeature] = (), runs: DecodeRuns | None = None,
        speculative: SpeculativeAlgorithm | None = None, gate: SpeculationGate | None = None,
    ) -> None:
        self.s = state
        self.prefill = prefill
        self.executor = executor
        self.results = results
        self.features = tuple(features)
        self.runs = runs or DecodeRuns(1, features)
        self.inflight: tuple[ScheduleBatch, Pending] | None = None
        self._launched: list[ScheduleBatch] = []  # launched decode steps not yet applied (at most two)
        self._applying = False
        self.speculative = speculative
        self.gate = gate  # NOTE: None with speculation: every decode step drafts, so none chains
        self._drafts_next: bool | None = None  # the gate's pick for the next decode step, asked when chaining
        self._mark = 0.0  # when the last plain decode resolved (or the chain's first launched)

    def step(self) -> None:
        """One overlapped step; a launch, sampling or resolve that raises fails the requests of every unresolved
        step (500) and the loop goes on. An error while applying resolved tokens is a bug: it propagates."""
        try:
            self._step()
        except Exception as exc:  # reported to each request of the failed steps
            if self._applying or not self._launched:
                raise
            fail_batches(self._launched, self.s, exc)
            self._launched = []
            self._set_inflight(None)
        finally:
            self._applying = False

    def _step(self) -> None:
        s = self.s
        if self.inflight is None:
            batch = plan_step(s, self.prefill, self.runs)
            if batch is None:
                return
            if batch.mode.is_decode and not self._drafts(len(batch.reqs)):
                self._mark = time.perf_counter()
                self._set_inflight(self._launch(batch, None, ahead=0))
            elif batch.mode.is_decode:
                run_step(batch, s, self.executor, self.results, self.speculative, self.gate, drafting=True)
            else:
                run_step(batch, s, self.executor, self.results)
            return
        batch, pending = self.inflight
        nxt = self._chain(batch, pending)
        result = self.executor.resolve(pending)
        self._launched.remove(batch)
        if self.speculative is not None:  # NOTE: one finished at N rode along in N+1 and counts no forward
            count_verify([r for r in batch.reqs if not r.finished])
        self._applying = True
        self.results.process_decode(batch, result)
        self._applying = False
        if self.gate is not None and self.speculative is not None:
            now = time.perf_counter()
            self.gate.record(len(batch.reqs), PLAIN, len(batch.reqs) * batch.steps, now - self._mark)
            self._mark = now
        if nxt is not None and nxt[1].next_ids is None:
            # NOTE: N's tokens are appended and accepted by now: sample N+1 while its forward may still run.
            nxt = (nxt[0], self.executor.finish_sampling(nxt[1]))
        self._set_inflight(nxt)

    def _drafts(self, size: int) -> bool:
        """Whether the next decode step of ``size`` requests drafts: the gate's pick, asked once per step."""
        if self.speculative is None:
            return False
        drafts, self._drafts_next = self._drafts_next, None
        if drafts is None:
            drafts = self.gate is None or self.gate.choose(size) == SPECULATE
        return drafts

    def _set_inflight(self, step: tuple[ScheduleBatch, Pending] | None) -> None:
        self.inflight = step
        self.s.inflight_steps = 0 if step is None else 1

    def _launch(
        self, batch: ScheduleBatch, input_ids: torch.Tensor | None, ahead: int, defer_sampling: bool = False
    ) -> tuple[ScheduleBatch, Pending]:
        self.s.counters.steps += 1
        for r in batch.reqs:
            r.inflight += batch.steps
        self._launched.append(batch)
        return batch, self.executor.launch(batch, input_ids, step_offset=ahead, defer_sampling=defer_sampling)

    def _chain(self, batch: ScheduleBatch, pending: Pending) -> tuple[ScheduleBatch, Pending] | None:
        s = self.s
        if s.chunked is not None or pending.next_ids is None or self.prefill.possible():
            return None
        defer = any(needs_host_tokens(r, self.features) for r in batch.reqs)
        # NOTE: a request that reaches max_new_tokens in N is known to finish: leave it out of N+1.
        # One a feature splices tokens into (grammar jump-forward) once N+1 resolves: leave it out too.
        ahead = batch.steps
        keep = [i for i, r in enumerate(batch.reqs)
                if not r.finished and not r.splice_pending
                and len(r.output_ids) + ahead < r.sampling_params.max_new_tokens]
        if not keep:
            return None
        reqs = [batch.reqs[i] for i in keep]
        if self._drafts(len(reqs)):
            self._drafts_next = True  # NOTE: resolve N first; the next step plans afresh and drafts
            return None
        steps = 1 if defer else self.runs.steps(s, reqs, ahead)
        nxt = decode_batch(s, reqs, ahead=ahead, steps=steps)
        if nxt is None:
            return None  # the pool is full: resolve first, then the plain path retracts
        ids = pending.next_ids
        if len(keep) != len(batch.reqs):
            keep_rows = to_device(torch.tensor(keep, dtype=torch.int64), ids.device, self.executor.pinned)
            ids = ids.index_select(0, keep_rows)
        s.counters.overlapped_steps += 1
        return self._launch(nxt, ids, ahead=ahead, defer_sampling=defer)
