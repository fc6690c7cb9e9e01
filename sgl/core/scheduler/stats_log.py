"""The scheduler's periodic log lines, in SGLang's words, computed from its counters (``counters`` and ``info()``).

A user watching a server wants to see that it is busy and how fast it goes, without one line per step: a decode line
every ``--decode-log-interval`` decode steps (SGLang's flag and its meaning), and a prefill line for the prompts
admitted since the previous one, at most once per ``PREFILL_LOG_PERIOD_S``, so a burst of arrivals reads as one line.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from sgl.core.scheduler.state import StepCounters

logger = logging.getLogger(__name__)

PREFILL_LOG_PERIOD_S = 1.0


class SchedulerView(Protocol):
    """What the log reads: cumulative counters (cheap, every tick), idleness, and the full info when a line is due."""

    @property
    def counters(self) -> StepCounters: ...

    @property
    def is_idle(self) -> bool: ...

    def info(self) -> Mapping[str, Any]: ...


class DecodeLine(NamedTuple):
    running: int
    used_tokens: int
    token_usage: float
    gen_throughput: float  # tokens/s generated since the previous decode line (or since the scheduler left idle)
    queued: int

    def __str__(self) -> str:
        return (f"Decode batch. #running-req: {self.running}, #token: {self.used_tokens}, "
                f"token usage: {self.token_usage:.2f}, gen throughput (token/s): {self.gen_throughput:.2f}, "
                f"#queue-req: {self.queued}")


class PrefillLine(NamedTuple):
    new_seqs: int  # requests whose first prefill was admitted since the previous prefill line
    new_tokens: int  # prompt tokens admitted since the previous prefill line that the cache did not hold
    cached_tokens: int
    token_usage: float
    running: int
    queued: int

    def __str__(self) -> str:
        return (f"Prefill batch. #new-seq: {self.new_seqs}, #new-token: {self.new_tokens}, #cached-token: {self.cached_tokens}, "
                f"token usage: {self.token_usage:.2f}, #running-req: {self.running}, #queue-req: {self.queued}")


def _used_tokens(info: Mapping[str, Any]) -> int:
    """KV slots neither free nor reclaimable from the cache (SGLang's #token)."""
    return int(info["max_total_tokens"]) - int(info["available_tokens"]) - int(info["evictable_tokens"])


class StatsLog:
    """Call ``tick()`` after every iteration of the scheduler loop; it logs when a line is due.

    NOTE: a tick reads only the counters; ``info()`` (which walks the running requests) is called only for a
    line. Decode lines fall where the cumulative decode-step count crosses a multiple of the interval, so over a run
    their number is exactly ``decode_steps // interval``.
    """

    def __init__(
        self, scheduler: SchedulerView, decode_interval: int, clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        if decode_interval < 1:
            raise ValueError(f"decode_interval must be >= 1, got {decode_interval}")
        self._s = scheduler
        self.decode_interval = decode_interval
        self._clock = clock
        self._emit = emit or logger.info
        c = scheduler.counters
        self._decode_steps = c.decode_steps
        self._prompt = c.prompt_tokens
        self._cached = c.cached_tokens
        self._seqs = c.prefill_reqs
        self._gen = c.generated_tokens
        self._window_start = clock()
        self._last_prefill_line = -math.inf
        self._was_idle = True

    def tick(self) -> None:
        c = self._s.counters
        now = self._clock()
        idle = self._s.is_idle
        if self._was_idle and not idle:
            # NOTE: the throughput window opens after the first busy step, so idle time never dilutes it
            self._window_start, self._gen = now, c.generated_tokens
        self._was_idle = idle
        info: Mapping[str, Any] | None = None
        if c.prompt_tokens != self._prompt and now - self._last_prefill_line >= PREFILL_LOG_PERIOD_S:
            info = self._s.info()
            self._emit(str(self._prefill_line(c, info)))
            self._last_prefill_line = now
        steps = c.decode_steps
        if steps // self.decode_interval > self._decode_steps // self.decode_interval:
            info = info or self._s.info()
            self._emit(str(self._decode_line(c, info, now)))
        self._decode_steps = steps

    def _prefill_line(self, c: StepCounters, info: Mapping[str, Any]) -> PrefillLine:
        prompt, cached = c.prompt_tokens - self._prompt, c.cached_tokens - self._cached
        seqs = c.prefill_reqs - self._seqs
        self._prompt, self._cached, self._seqs = c.prompt_tokens, c.cached_tokens, c.prefill_reqs
        return PrefillLine(seqs, prompt - cached, cached, float(info["token_usage"]), int(info["num_running_reqs"]),
                           int(info["num_waiting_reqs"]))

    def _decode_line(self, c: StepCounters, info: Mapping[str, Any], now: float) -> DecodeLine:
        elapsed = now - self._window_start
        tokens = c.generated_tokens - self._gen
        self._window_start, self._gen = now, c.generated_tokens
        return DecodeLine(int(info["num_running_reqs"]), _used_tokens(info), float(info["token_usage"]),
                          tokens / elapsed if elapsed > 0 else 0.0, int(info["num_waiting_reqs"]))
