"""When to speculate: measured tokens per second with and without drafts, per batch size.

At small batch a verify forward costs about what a decode forward costs, so every accepted draft is a token for free.
At large batch the forward is bound by compute rather than by reading the weights, and verifying ``k`` drafts per
request costs up to ``k`` times a decode step: speculation then loses (SGLang and vLLM lose 1.4-1.8x at high load
without a gate). The gate times each decode step, speculative or plain, keeps a moving average of the tokens per
second each mode delivered for batches of that size (bucketed by powers of two), and runs the faster mode, probing the
slower one now and then so that a change (acceptance drifting, the batch filling) is noticed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

SPECULATE, PLAIN = "speculate", "plain"


@dataclass
class _Rate:
    """Tokens per second as the ratio of moving averages of tokens and of seconds per step: a step's time split
    unevenly between two samples (the overlap loop resolves a chain's first step late and its second early) averages
    out, where a moving average of each step's own rate would be dominated by the short one."""

    tokens: float = 0.0
    seconds: float = 0.0
    samples: int = 0

    def add(self, tokens: float, seconds: float, weight: float) -> None:
        keep = 0.0 if self.samples == 0 else 1 - weight
        self.tokens = keep * self.tokens + (1 - keep) * tokens
        self.seconds = keep * self.seconds + (1 - keep) * seconds
        self.samples += 1

    @property
    def value(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Bucket:
    rates: dict[str, _Rate] = field(default_factory=lambda: {SPECULATE: _Rate(), PLAIN: _Rate()})
    since_probe: int = 0
    probe_every: int = 0  # steps between probes; doubles while the probes leave the order as it was
    leader: str = ""  # the mode that was faster when last asked


class SpeculationGate:
    """``choose(batch_size)`` says which mode the next decode step runs; ``record`` reports what it delivered."""

    def __init__(self, warmup: int = 3, probe_every: int = 32, weight: float = 0.1,
                 clock: Callable[[], float] = time.perf_counter, max_probe_every: int = 256,
                 probe_weight: float = 0.5) -> None:
        self.warmup = warmup  # samples of each mode before the faster one is trusted
        self.probe_every = probe_every  # steps in the faster mode between probes of the slower one, at first
        self.max_probe_every = max(max_probe_every, probe_every)
        # NOTE: a drafting step yields 1..k+1 tokens at random: a small weight keeps the faster mode's average from
        # dipping below the other's by chance (measured at batch 1: a weight of 0.2 let plain steps take 15-45% of
        # the steps at an acceptance length of 3); a probe's sample weighs more, as the estimate it updates is old
        self.weight = weight
        self.probe_weight = probe_weight
        self.clock = clock
        self.buckets: dict[int, _Bucket] = {}
        self.plain_steps = 0

    @staticmethod
    def bucket_of(batch_size: int) -> int:
        return 1 << max(batch_size - 1, 0).bit_length()

    def choose(self, batch_size: int) -> str:
        b = self.buckets.setdefault(self.bucket_of(batch_size), _Bucket())
        spec, plain = b.rates[SPECULATE], b.rates[PLAIN]
        for mode in (SPECULATE, PLAIN):
            if b.rates[mode].samples < self.warmup:
                return mode
        faster, slower = (SPECULATE, PLAIN) if spec.value >= plain.value else (PLAIN, SPECULATE)
        if faster != b.leader:  # NOTE: the first comparison, or a probe (or drift) changed the order: start over
            b.leader, b.probe_every, b.since_probe = faster, self.probe_every, 0
        b.since_probe += 1
        if b.since_probe > b.probe_every:
            b.since_probe = 0
            b.probe_every = min(2 * b.probe_every, self.max_probe_every)
            return slower
        return faster

    def record(self, batch_size: int, mode: str, tokens: int, seconds: float) -> None:
        if mode == PLAIN:
            self.plain_steps += 1
        if seconds > 0:
            b = self.buckets.setdefault(self.bucket_of(batch_size), _Bucket())
            probe = b.leader != "" and mode != b.leader
            b.rates[mode].add(tokens, seconds, self.probe_weight if probe else self.weight)

    def info(self) -> dict[str, object]:
        return {
            "spec_gate_plain_steps": self.plain_steps,
            "spec_gate_tokens_per_s": {
                str(size): {mode: round(r.value, 1) for mode, r in b.rates.items() if r.samples}
                for size, b in sorted(self.buckets.items())
            },
        }
