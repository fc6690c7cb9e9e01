"""The speculative decoding contract: an algorithm drafts tokens that the target model then verifies.

Algorithms register by name through ``sgl_speculative_algorithms`` and are chosen by ``--speculative-algorithm
NAME``. The core builds the chosen algorithm once at startup, after the target model is loaded, by calling
``create``; the algorithm is a scheduler feature, so the scheduler calls it at the fixed points of
``sgl.core.scheduler.feature`` (admit, mask, per token, release) from then on.

It also owns the decode step's shape: each decode step the scheduler allocates one KV slot per running request, then
calls ``decode_step``. The algorithm proposes drafts and verifies them with ``sgl.core.speculative.verify`` (one
TARGET_VERIFY forward of the target); the scheduler appends the accepted tokens one by one (stop conditions checked at
each) and frees the KV slots of the rejected drafts through the allocator. ``None`` runs the plain decode step.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sgl.core.scheduler.feature import SchedulerFeature
from sgl.core.speculative.verify import accept_matching

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.runner.model_runner import ModelRunner
    from sgl.core.scheduler.batch import ScheduleBatch
    from sgl.core.scheduler.req import Req
    from sgl.core.scheduler.state import SchedulerState
    from sgl.core.scheduler.step import StepExecutor
    from sgl.core.speculative.verify import VerifyResult

FLAG = "--speculative-algorithm"

NOT_YET_SUPPORTED: tuple[str, ...] = ()
"""SGLang's algorithm names, which no in-tree plugin implements yet: refused at startup with one line."""


SHAPE_FLAGS: tuple[str, ...] = (
    "speculative_draft_model_path", "speculative_num_steps", "speculative_eagle_topk", "speculative_num_draft_tokens",
)


def check_flags(server_args: ServerArgs) -> None:
    """Speculation's flags mean nothing without an algorithm: refused with one line rather than ignored."""
    if server_args.speculative_algorithm is not None:
        return
    given = [f for f in SHAPE_FLAGS if getattr(server_args, f) is not None]
    if server_args.disable_speculative_gate:
        given.append("disable_speculative_gate")
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(f"{flag} needs --speculative-algorithm (speculative decoding is off)")


class SpeculativeAlgorithm(SchedulerFeature):
    """One way of proposing several tokens per decode step for the target model to verify."""

    name = "speculative"

    @classmethod
    @abstractmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> SpeculativeAlgorithm:
        """Built once per rank at startup from the server's arguments (the plugin's own options included: see
        ``sgl.core.plugin_options.plugin_args``) and the target's runner (its model config, device and pools).
        Raise ValueError to refuse the configuration; the message is the startup error."""

    def decode_step(self, batch: ScheduleBatch, state: SchedulerState, executor: StepExecutor) -> VerifyResult | None:
        """Runs the DECODE ``batch`` (one KV slot per request already allocated, its token's) with drafts: usually
        ``verify_drafts(batch, state, executor, drafts)``. None: no drafts this step, the plain decode runs.

        NOTE: the returned slots are the scheduler's to keep or free; the algorithm frees none of them."""
        return None

    def accept(self, req: Req, drafts: Sequence[int], target: Sequence[int]) -> int:
        """How many of ``req``'s ``drafts`` a chain verify accepts, given the target's tokens at the ``len(drafts) + 1``
        verified positions; the step emits those drafts, then the target's token after them. The default is the exact
        rule (``accept_matching``); an algorithm passes ``self.accept`` to
        ``verify_drafts``/``run_verify``. Overriding it changes what is emitted: only a measuring tool should."""
        return accept_matching(req, drafts, target)
