"""Test helper (not a test): a speculative algorithm that drafts a scripted continuation, through the core contract
only (as a third party's would), and a scheduler driven step by step around it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sgl.core.config import ServerArgs
from sgl.core.ipc import GenerateReq
from sgl.core.runtime import Runtime, build_runtime
from sgl.core.sampling.params import SamplingParams
from sgl.core.scheduler.scheduler import Scheduler
from sgl.core.speculative.base import SpeculativeAlgorithm
from sgl.core.speculative.verify import VerifyResult, draft_budget, may_draft, verify_drafts


class ScriptedDrafts(SpeculativeAlgorithm):
    """Drafts ``script[rid]`` from the request's current output length; ``corrupt(pos, token)`` may spoil a draft."""

    def __init__(self, script: dict[str, list[int]], k: int, corrupt: Callable[[int, int], int] | None = None) -> None:
        self.script, self.k, self.corrupt = script, k, corrupt
        self.drafted = self.accepted = self.verifies = 0

    @classmethod
    def create(cls, server_args: Any, runner: Any) -> ScriptedDrafts:
        return cls({}, 1)

    def decode_step(self, batch: Any, state: Any, executor: Any) -> VerifyResult | None:
        drafts = []
        for r in batch.reqs:
            k = draft_budget(r, self.k, executor.runner.context_len) if may_draft(r, executor) else 0
            n = len(r.output_ids)
            d = list(self.script.get(r.rid, [])[n : n + k])
            if self.corrupt is not None:
                d = [self.corrupt(n + j, t) for j, t in enumerate(d)]
            drafts.append(d)
        result = verify_drafts(batch, state, executor, drafts)
        if result is not None:
            self.verifies += 1
            self.drafted += sum(result.drafted)
            self.accepted += sum(len(t) - 1 for t in result.tokens)
        return self.tamper(result)

    def tamper(self, result: VerifyResult | None) -> VerifyResult | None:
        return result


def runtime(model: Path, **kw: Any) -> Runtime:
    kw.setdefault("max_total_tokens", 4096)
    kw.setdefault("context_length", 256)
    args = ServerArgs(model_path=str(model), backend="cpu", debug_invariants=True, **kw)
    return build_runtime(args)


def with_feature(rt: Runtime, feature: SpeculativeAlgorithm) -> Scheduler:
    """A fresh scheduler over the runtime's runner, with ``feature`` as its speculative algorithm."""
    s = rt.scheduler
    spec = Scheduler(rt.args, s.runner, s.results.detokenize, s.eos_ids, [*s.features, feature])
    spec.gate = None  # NOTE: these tests count verify steps: every decode step drafts, whatever it costs
    return spec


def run(s: Scheduler, reqs: Sequence[tuple[str, list[int], SamplingParams]]) -> dict[str, tuple[list[int], str]]:
    """Runs the requests to the end: rid -> (output ids, finish type). The pool invariant is checked every step."""
    for rid, ids, params in reqs:
        s.add_request(GenerateReq(rid, ids, params))
    out: dict[str, list[int]] = {rid: [] for rid, _, _ in reqs}
    reason: dict[str, str] = {}
    for _ in range(10_000):
        for o in s.step().outputs:
            out[o.rid] += o.new_token_ids
            if o.finished is not None:
                reason[o.rid] = o.finished.type
        if s.is_idle:
            break
    s.check_invariant()
    assert s.state.allocator.available_size() + s.state.cache.evictable_size() == s.state.allocator.size
    return {rid: (out[rid], reason[rid]) for rid in out}
