"""A benchmark-only speculative algorithm: EAGLE-3's draft forwards and the target's verify forward run as usual
(their time is paid), but which drafts are accepted is a seeded draw, not a comparison with the target's tokens: each
draft is rejected with probability ``corrupt``, the first rejection ending the accepted run, as in a real verify.

Why: dummy weights accept nothing, and with their nearly flat logits the verify forward and plain decoding pick
different argmaxes, so no recording of the target's tokens is accepted reliably either. Overriding the algorithm's
``accept`` (the contract's acceptance hook) gives the acceptance asked for whatever the numerics: the step emits the
accepted drafts and the target's token after them, and the scheduler frees the rejected drafts' KV, exactly as in
real speculation. A chain of k drafts then has a mean acceptance length of 1 + sum_(j=1..k) (1 - p)^j
(``expected_accept_length``). What is emitted is not the target's greedy output: a timing tool only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from benchmarks.spec_replay_plugin import ALGORITHM, ReplayArgs
from sgl.core.plugin_options import plugin_args
from sgl.plugins.speculative.eagle import Eagle3Algorithm

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.runner.model_runner import ModelRunner
    from sgl.core.scheduler.req import Req


def expected_accept_length(corrupt: float, steps: int) -> float:
    """Tokens per verify forward when each of ``steps`` drafts is wrong with probability ``corrupt``, independently."""
    return 1.0 + sum((1.0 - corrupt) ** j for j in range(1, steps + 1))


def corruption_for(accept_length: float, steps: int) -> float:
    """The corruption rate whose expected acceptance length is ``accept_length`` (1 .. steps + 1)."""
    if not 1.0 <= accept_length <= steps + 1:
        raise ValueError(f"acceptance length {accept_length}: a chain of {steps} drafts gives 1 to {steps + 1}")
    lo, hi = 0.0, 1.0
    for _ in range(60):  # NOTE: expected_accept_length falls as the rate rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_accept_length(mid, steps) > accept_length else (lo, mid)
    return round((lo + hi) / 2, 6)


class Eagle3ReplayAlgorithm(Eagle3Algorithm):
    """EAGLE3 whose drafts are accepted by a seeded draw at the configured rate (chains only: topk 1)."""

    algorithm = ALGORITHM
    corrupt: float
    rng: random.Random

    @classmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> Eagle3ReplayAlgorithm:
        topk = server_args.speculative_eagle_topk
        if topk not in (None, 1):
            raise ValueError(f"--speculative-eagle-topk {topk}: {ALGORITHM} replays chains (topk 1)")
        opts = plugin_args(server_args, ReplayArgs)
        if not 0.0 <= opts.corrupt <= 1.0:
            raise ValueError(f"ReplayArgs.corrupt {opts.corrupt}: a probability, 0 to 1")
        algo = super().create(server_args, runner)
        assert isinstance(algo, cls)
        algo.corrupt, algo.rng = opts.corrupt, random.Random(opts.seed)
        return algo

    def accept(self, req: Req, drafts: Sequence[int], target: Sequence[int]) -> int:
        """The drafts before the first one the draw rejects; the target's tokens are not consulted."""
        n = 0
        while n < len(drafts) and self.rng.random() >= self.corrupt:
            n += 1
        return n

    def info(self) -> dict[str, Any]:
        return {
            **super().info(), "spec_verify_rows": self.stats.verify_rows, "replay_corrupt": self.corrupt,
            "replay_expected_accept_length": round(expected_accept_length(self.corrupt, self.num_steps), 4),
        }
