"""Serving metrics and their Prometheus text exposition (format 0.0.4), written by hand to avoid a dependency.

Latencies are measured where the API process sees the pipe: from sending a request to its first token (TTFT),
between token batches (inter-token, per token), and to its finish (end-to-end).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sgl.core.ipc import ReqOutput, TokenDelta

PREFIX = "sgl"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
THROUGHPUT_WINDOW_S = 10.0  # last_gen_throughput: tokens/s over the outputs of the last this-many seconds


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)  # NOTE: the last slot is +Inf

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += times
        self.total += value * times
        self.count += times

    def lines(self) -> list[str]:
        full = f"{PREFIX}_{self.name}"
        out = [f"# HELP {full} {self.help}", f"# TYPE {full} histogram"]
        running = 0
        for bound, c in zip((*self.buckets, math.inf), self.counts):
            running += c
            out.append(f'{full}_bucket{{le="{_fmt(bound)}"}} {running}')
        out += [f"{full}_sum {_fmt(self.total)}", f"{full}_count {self.count}"]
        return out


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value)}.0"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in (labels or {}).items())
    return f"{PREFIX}_{name}{{{label_text}}} {_fmt(value)}" if label_text else f"{PREFIX}_{name} {_fmt(value)}"


def _family(name: str, kind: str, help: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {PREFIX}_{name} {help}", f"# TYPE {PREFIX}_{name} {kind}", *samples]


class Metrics:
    """Thread-safe: requests are registered on the event loop, outputs observed on the pipe's reader thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self.finished: dict[str, int] = {}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cached_tokens = 0
        self.ttft = Histogram("time_to_first_token_seconds", "Time from request to its first output token.",
                              TTFT_BUCKETS)
        self.itl = Histogram("inter_token_latency_seconds", "Time between consecutive output tokens.", ITL_BUCKETS)
        self.e2e = Histogram("e2e_request_latency_seconds", "Time from request to its last output.", E2E_BUCKETS)
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of each output batch in the window

    def on_sent(self, rid: str) -> None:
        with self._lock:
            self._sent[rid] = time.monotonic()

    def on_outputs(self, outputs: Iterable[ReqOutput], deltas: Sequence[TokenDelta] = ()) -> None:
        """One scheduler message: whole outputs and the token deltas of streamed requests (ipc.TokenDelta)."""
        now = time.monotonic()
        outputs = list(outputs)
        with self._lock:
            tokens = sum(len(out.new_token_ids) for out in outputs) + sum(len(ids) for _, ids in deltas)
            if tokens:
                self._recent.append((now, tokens))
                self._prune(now)
            seen = self._last
            for rid, ids in deltas:
                # NOTE: a delta never carries a request's first token (a whole ReqOutput does): an ITL sample
                before = seen.get(rid)
                if before is not None:
                    self.itl.observe((now - before) / len(ids), len(ids))
                    seen[rid] = now
            for out in outputs:
                sent = self._sent.get(out.rid)
                if sent is None:
                    continue
                if out.new_token_ids:
                    last = self._last.get(out.rid)
                    if last is None:
                        self.ttft.observe(now - sent)
                    else:
                        n = len(out.new_token_ids)
                        self.itl.observe((now - last) / n, n)
                    self._last[out.rid] = now
                if out.finished is not None:
                    self.e2e.observe(now - sent)
                    reason = out.finished.type
                    self.finished[reason] = self.finished.get(reason, 0) + 1
                    self.prompt_tokens += out.prompt_tokens
                    self.generation_tokens += out.completion_tokens
                    self.cached_tokens += out.cached_tokens
                    self._sent.pop(out.rid, None)
                    self._last.pop(out.rid, None)

    def _prune(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - THROUGHPUT_WINDOW_S:
            self._recent.popleft()

    def gen_throughput(self) -> float:
        """Generated tokens per second over the recent window (SGLang's last_gen_throughput); 0.0 when idle."""
        with self._lock:
            self._prune(time.monotonic())
            if len(self._recent) < 2:
                return 0.0
            span = self._recent[-1][0] - self._recent[0][0]
            tokens = sum(n for _, n in list(self._recent)[1:])  # NOTE: the first batch marks the window's start
            return round(tokens / span, 2) if span > 0 else 0.0

    def forget(self, rids: Iterable[str]) -> None:
        """Requests that end without a finished output (the scheduler died) stop being tracked."""
        with self._lock:
            for rid in rids:
                self._sent.pop(rid, None)
                self._last.pop(rid, None)

    def render(self, scheduler: Mapping[str, Any], pending_requests: int) -> str:
        """The exposition text; ``scheduler`` is the scheduler's info() (gauges are read at scrape time)."""
        with self._lock:
            lines: list[str] = []
            reasons = self.finished or {"stop": 0}
            lines += _family("requests_total", "counter", "Finished requests by finish reason.",
                             [_sample("requests_total", v, {"finish_reason": k}) for k, v in sorted(reasons.items())])
            lines += _family("prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
                             [_sample("prompt_tokens_total", self.prompt_tokens)])
            lines += _family("generation_tokens_total", "counter", "Generated tokens of finished requests.",
                             [_sample("generation_tokens_total", self.generation_tokens)])
            lines += _family("cached_tokens_total", "counter", "Prompt tokens served from the prefix cache.",
                             [_sample("cached_tokens_total", self.cached_tokens)])
            gauges = (
                ("num_running_reqs", "Requests running in the scheduler.", scheduler.get("num_running_reqs", 0)),
                ("num_queue_reqs", "Requests waiting in the scheduler's queue.", scheduler.get("num_waiting_reqs", 0)),
                ("num_pending_reqs", "Requests the API process is serving.", pending_requests),
                ("token_usage", "Fraction of the KV pool held by requests (not evictable).",
                 scheduler.get("token_usage", 0.0)),
                ("max_total_tokens", "KV pool size in tokens.", scheduler.get("max_total_tokens", 0)),
                ("cache_hit_rate", "Prompt tokens served from the prefix cache / all prompt tokens.",
                 scheduler.get("cache_hit_rate", 0.0)),
            )
            if scheduler.get("avg_spec_accept_length"):  # SGLang's spec_accept_length, with speculation on
                gauges += (("spec_accept_length", "Mean tokens a request gains per speculative verify forward.",
                            scheduler["avg_spec_accept_length"]),)
            for name, help_text, value in gauges:
                lines += _family(name, "gauge", help_text, [_sample(name, float(value))])
            for hist in (self.ttft, self.itl, self.e2e):
                lines += hist.lines()
        return "\n".join(lines) + "\n"
