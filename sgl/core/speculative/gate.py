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
    """A moving average of tokens per second."""

    value: float = 0.0
    samples: int = 0

    def add(self, tokens_per_s: float, weight: float) -> None:
        self.value = tokens_per_s if self.samples == 0 else (1 - weight) * self.value + weight * tokens_per_s
        self.samples += 1


@dataclass
class _Bucket:
    rates: dict[str, _Rate] = field(default_factory=lambda: {SPECULATE: _Rate(), PLAIN: _Rate()})
    since_probe: int = 0


class SpeculationGate:
    """``choose(batch_size)`` says which mode the next decode step runs; ``record`` reports what it delivered."""

    def __init__(self, warmup: int = 3, probe_every: int = 32, weight: float = 0.2,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.warmup = warmup  # samples of each mode before the faster one is trusted
        self.probe_every = probe_every  # steps in the faster mode between probes of the slower one
        self.weight = weight
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
        b.since_probe += 1
        if b.since_probe > self.probe_every:
            b.since_probe = 0
            return slower
        return faster

    def record(self, batch_size: int, mode: str, tokens: int, seconds: float) -> None:
        if mode == PLAIN:
            self.plain_steps += 1
        if seconds > 0:
            b = self.buckets.setdefault(self.bucket_of(batch_size), _Bucket())
            b.rates[mode].add(tokens / seconds, self.weight)

    def info(self) -> dict[str, object]:
        return {
            "spec_gate_plain_steps": self.plain_steps,
            "spec_gate_tokens_per_s": {
                str(size): {mode: round(r.value, 1) for mode, r in b.rates.items() if r.samples}
                for size, b in sorted(self.buckets.items())
            },
        }
