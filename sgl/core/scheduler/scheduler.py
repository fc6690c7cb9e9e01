"""The scheduler: continuous batching over the radix cache and the paged KV pool (DESIGN section 6).

It owns one SchedulerState and hands it to its parts: the prefill builder, the decode path, the overlap loop and the
result processor receive the state, never the scheduler. Features (grammar, ...) meet it at the fixed points of
``feature.SchedulerFeature``; this file names none of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sgl.core.cache.base import PrefixCache
from sgl.core.cache.chunk_cache import ChunkCache
from sgl.core.cache.radix_cache import RadixCache
from sgl.core.config import ServerArgs
from sgl.core.ipc import BatchOutput, FinishReason, GenerateReq, ReqOutput, TokenDelta
from sgl.core.memory.allocator import TokenAllocator
from sgl.core.runner.model_runner import ModelRunner
from sgl.core.scheduler.decode import DecodeRuns
from sgl.core.scheduler.feature import SchedulerFeature
from sgl.core.scheduler.new_token_ratio import NewTokenRatio
from sgl.core.scheduler.overlap import OverlapLoop
from sgl.core.scheduler.plan import plan_step, run_step
from sgl.core.scheduler.prefill import PrefillBuilder
from sgl.core.scheduler.req import Req
from sgl.core.scheduler.results import ResultProcessor
from sgl.core.scheduler.state import SchedulerState, SchedulingLimits, StepCounters
from sgl.core.scheduler.step import StepExecutor
from sgl.core.speculative.base import SpeculativeAlgorithm
from sgl.core.speculative.gate import SpeculationGate

logger = logging.getLogger(__name__)


def scheduling_limits(args: ServerArgs, runner: ModelRunner) -> SchedulingLimits:
    chunk = args.chunked_prefill_size if args.enable_chunked_prefill else None
    return SchedulingLimits(
        page_size=args.page_size, max_running=runner.max_running_requests, chunk_size=chunk,
        prefill_token_budget=min(args.max_prefill_tokens, chunk or args.max_prefill_tokens),
        share_prefixes=not args.disable_radix_cache, policy=args.schedule_policy, mixed_chunk=args.enable_mixed_chunk,
    )


class Scheduler:
    """Owns every request between admission and release. It never raises on a request's behalf.

    NOTE: a request's KV leaves through ``SchedulerState.release`` only (finish, abort, retract alike); after every
    step free + evictable + locked + request-owned == pool size (checked when ``debug_invariants`` is on).
    """

    def __init__(
        self, args: ServerArgs, runner: ModelRunner, detokenize: Callable[[Sequence[int]], str], eos_ids: set[int],
        features: Sequence[SchedulerFeature] = (),
    ) -> None:
        self.args = args
        self.runner = runner
        self.eos_ids = eos_ids
        self.features = tuple(features)
        limits = scheduling_limits(args, runner)
        allocator = TokenAllocator(runner.max_total_tokens, args.page_size, "cpu")
        cache_cls = ChunkCache if args.disable_radix_cache else RadixCache
        cache: PrefixCache = cache_cls(runner.req_to_token_pool, allocator, page_size=args.page_size)
        self.state = SchedulerState(limits, allocator, cache, runner.req_to_token_pool,
                                    NewTokenRatio(args.schedule_conservativeness))
        self.executor = StepExecutor(runner, self.features)
        self.results = ResultProcessor(self.state, self.features, detokenize)
        self.prefill = PrefillBuilder(self.state, self.features)
        # NOTE: the feature that owns the decode step's shape (drafts verified per step), if any
        self.speculative = next((f for f in self.features if isinstance(f, SpeculativeAlgorithm)), None)
        if self.speculative is not None and args.num_continuous_decode_steps > 1:
            raise ValueError(f"--num-continuous-decode-steps {args.num_continuous_decode_steps}: speculative "
                             "decoding runs single decode steps (each verifies several tokens)")
        self._gate = (SpeculationGate() if self.speculative is not None and not args.disable_speculative_gate
                     else None)
        self.runs = DecodeRuns(args.num_continuous_decode_steps, self.features)
        use_overlap = args.force_overlap_schedule or (
            runner.platform.capabilities.overlap_schedule and not args.disable_overlap_schedule
        )
        # NOTE: with speculation, the steps that draft run alone and the gate's plain steps overlap
        self.overlap = (OverlapLoop(self.state, self.prefill, self.executor, self.results, self.features, self.runs,
                                    self.speculative, self._gate)
                        if use_overlap else None)
        self._arrivals = 0
        self._in_step = False

    # views the engine, benchmarks and tests read -----------------------------------------------------------------
    @property
    def gate(self) -> SpeculationGate | None:
        """Picks plain or drafting decode steps by what each delivered; None: every decode step drafts."""
        return self._gate

    @gate.setter
    def gate(self, gate: SpeculationGate | None) -> None:
        self._gate = gate
        if self.overlap is not None:
            self.overlap.gate = gate

    @property
    def waiting(self) -> list[Req]:
        return self.state.waiting

    @property
    def running(self) -> list[Req]:
        return self.state.running

    @property
    def chunked(self) -> Req | None:
        return self.state.chunked

    @property
    def token_ratio(self) -> NewTokenRatio:
        return self.state.token_ratio

    @token_ratio.setter
    def token_ratio(self, ratio: NewTokenRatio) -> None:
        self.state.token_ratio = ratio

    @property
    def is_idle(self) -> bool:
        return self.state.is_idle

    @property
    def is_busy(self) -> bool:
        """Inside a step, or with work queued (the watchdog's notion: a prefill's requests sit in no queue)."""
        return self._in_step or not self.state.is_idle

    @property
    def counters(self) -> StepCounters:
        return self.state.counters

    # intake -----------------------------------------------------------------------------------------------------
    def add_request(self, msg: GenerateReq) -> None:
        s = self.state
        if msg.rid in s.reqs:
            self._finish_unscheduled(msg, FinishReason("abort", message=f"duplicate request id {msg.rid!r}",
                                                       status_code=400))
            return
        limit = self.args.max_queued_requests
        if limit is not None and len(s.waiting) >= limit:
            # NOTE: a bounded queue: past the limit a request is refused at once (503), never left to wait unbounded
            self._finish_unscheduled(msg, FinishReason(
                "abort", message=f"the server is busy: {len(s.waiting)} requests are already waiting "
                f"(--max-queued-requests {limit}); retry later", status_code=503))
            return
        req = Req(msg, self.eos_ids, self._arrivals)
        self._arrivals += 1
        for f in self.features:
            refused = f.admit(req)
            if refused is not None:
                for g in self.features:
                    g.release(req)
                self._finish_unscheduled(msg, refused)
                return
        s.reqs[req.rid] = req
        if req.group is not None and req.group not in s.group_leaders:
            s.group_leaders[req.group] = req.rid
        s.waiting.append(req)

    def _finish_unscheduled(self, msg: GenerateReq, reason: FinishReason) -> None:
        req = Req(msg, self.eos_ids, -1)
        req.finished_reason = reason
        self.state.touched[f"\0{msg.rid}"] = req

    def abort(self, rid: str) -> None:
        req = self.state.reqs.get(rid)
        if req is None or req.finished:
            return
        req.finished_reason = FinishReason("abort", message="request aborted")
        self.state.finish(req)

    # the step ---------------------------------------------------------------------------------------------------
    def step(self) -> BatchOutput:
        """Runs at most one forward (two overlapped, in overlap mode) and returns what changed per request."""
        s = self.state
        self._settle_features()
        t0, steps, decodes = time.perf_counter(), s.counters.steps, s.counters.decode_steps
        self._in_step = True
        try:
            if self.overlap is not None:
                self.overlap.step()
            else:
                batch = plan_step(s, self.prefill, self.runs)
                if batch is not None:
                    run_step(batch, s, self.executor, self.results, self.speculative, self.gate)
        finally:
            self._in_step = False
        # NOTE: wall time by the kind of step that finished in it (overlap: the decode it resolved), so a run can
        # tell time lost to prefill from time in decode
        ms = round((time.perf_counter() - t0) * 1e3)
        if s.counters.decode_steps != decodes:
            s.counters.decode_ms += ms
        elif s.counters.steps != steps:
            s.counters.prefill_ms += ms
        if self.args.debug_invariants:
            s.check_invariant()
        return self._collect_outputs()

    def _settle_features(self) -> None:
        s = self.state
        # NOTE: idle when nothing runs and every waiting request still waits on some feature (a compile)
        idle = not s.running and s.chunked is None and not any(
            all(f.ready(r) for f in self.features) for r in s.waiting
        )
        for f in self.features:
            for r, reason in f.settle(idle):
                if not r.finished:
                    r.finished_reason = reason
                    s.finish(r)

    # outputs ----------------------------------------------------------------------------------------------------
    def _collect_outputs(self) -> BatchOutput:
        s = self.state
        outs: list[ReqOutput] = []
        deltas: list[TokenDelta] = []
        interval = self.args.stream_interval
        for r in s.touched.values():
            out = r.take_output(interval)
            if out is not None:
                if isinstance(out, tuple):
                    deltas.append(out)
                else:
                    outs.append(out)
            if r.finished_reason is not None and s.reqs.get(r.rid) is r:
                del s.reqs[r.rid]
                for f in self.features:  # NOTE: the one place every ended request passes exactly once
                    f.release(r)
        s.touched = {}
        return BatchOutput(outs, deltas)

    # control ----------------------------------------------------------------------------------------------------
    def check_invariant(self) -> None:
        self.state.check_invariant()

    def flush_cache(self) -> bool:
        if not self.state.is_idle:
            return False
        self.state.cache.reset()
        return True

    def call_feature(self, feature: str, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Runs a feature's control operation between steps; a refusal comes back as ``{"error": message}``."""
        for f in self.features:
            if f.name == feature:
                try:
                    return f.call(method, kwargs)
                except ValueError as exc:
                    return {"error": str(exc)}
        return {"error": f"the {feature} feature is not enabled on this server"}

    def close(self) -> None:
        for f in self.features:
            f.close()

    def info(self) -> dict[str, Any]:
        info = self.state.info()
        for f in self.features:
            info.update(f.info())
        if self.gate is not None:
            info.update(self.gate.info())
        return info
