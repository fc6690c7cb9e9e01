"""What every drafting algorithm of this plugin shares: the per-step loop (budget, propose, verify) and the
acceptance counters reported in the server info."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sgl.core.speculative.base import SpeculativeAlgorithm
from sgl.core.speculative.verify import VerifyResult, draft_budget, may_draft, verify_drafts

if TYPE_CHECKING:
    from sgl.core.scheduler.batch import ScheduleBatch
    from sgl.core.scheduler.req import Req
    from sgl.core.scheduler.state import SchedulerState
    from sgl.core.scheduler.step import StepExecutor


@dataclass
class AcceptanceStats:
    """Cumulative since start. The acceptance length is what one verify forward emits per request, on average."""

    verify_steps: int = 0  # TARGET_VERIFY forwards
    verify_rows: int = 0  # (request, verify forward) pairs
    drafted: int = 0
    accepted: int = 0  # drafts the target agreed with

    def record(self, result: VerifyResult) -> None:
        self.verify_steps += 1
        self.verify_rows += len(result.tokens)
        self.drafted += sum(result.drafted)
        self.accepted += sum(len(t) - 1 for t in result.tokens)

    def as_info(self, algorithm: str) -> dict[str, Any]:
        rows = max(self.verify_rows, 1)
        return {
            "speculative_algorithm": algorithm, "spec_verify_steps": self.verify_steps,
            "spec_drafted_tokens": self.drafted, "spec_accepted_tokens": self.accepted,
            "spec_accept_rate": round(self.accepted / max(self.drafted, 1), 4),
            # SGLang's name: tokens emitted per request per verify forward (1.0 = nothing accepted)
            "avg_spec_accept_length": round((self.accepted + self.verify_rows) / rows, 4) if self.verify_rows else 0.0,
        }


class DraftingAlgorithm(SpeculativeAlgorithm):
    """Drafts a chain of up to ``max_drafts`` tokens per request, then verifies them all in one target forward."""

    algorithm = "?"

    def __init__(self, max_drafts: int, context_len: int) -> None:
        if max_drafts < 1:
            raise ValueError(f"--speculative-num-draft-tokens must be at least 2 (got {max_drafts + 1})")
        self.max_drafts = max_drafts
        self.context_len = context_len
        self.stats = AcceptanceStats()

    @abstractmethod
    def propose(self, reqs: list[Req], budgets: list[int]) -> list[list[int]]:
        """At most ``budgets[i]`` draft tokens to follow ``reqs[i].all_ids()`` (a budget may be 0)."""

    def decode_step(self, batch: ScheduleBatch, state: SchedulerState, executor: StepExecutor) -> VerifyResult | None:
        budgets = [draft_budget(r, self.max_drafts, self.context_len) if may_draft(r, executor) else 0
                   for r in batch.reqs]
        if not any(budgets):
            return None
        drafts = [d[:b] for d, b in zip(self.propose(batch.reqs, budgets), budgets)]
        result = verify_drafts(batch, state, executor, drafts, self.accept)
        if result is not None:
            self.stats.record(result)
        return result

    def info(self) -> dict[str, Any]:
        return self.stats.as_info(self.algorithm)
