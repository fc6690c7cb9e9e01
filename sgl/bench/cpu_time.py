"""CPU seconds of the processes a serving run spans (bench client, API server, its scheduler children).

Why: a server slower than the offline engine on the same workload spends the difference in host work somewhere;
CPU seconds per output token of each process say where, and whether the API process could keep up with a fast
device on its one core. Read from ``/proc`` (Linux); elsewhere every figure is None rather than a guess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads); None when it is gone or /proc is absent."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # NOTE: after the ")" that ends the command name, utime and stime are the 12th and 13th fields
    return (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (a server's scheduler ranks and multiprocessing's helpers)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for k in kids:
            out += [k, *children(k)]
    return out


class CpuSplit(NamedTuple):
    """CPU seconds per role over one measured interval, and the output tokens of that interval."""

    seconds: Mapping[str, float | None]
    output_tokens: int

    def us_per_token(self) -> dict[str, float | None]:
        n = max(self.output_tokens, 1)
        return {role: None if s is None else s * 1e6 / n for role, s in self.seconds.items()}


class CpuMeter:
    """Samples the CPU seconds of named process groups at start and stop: ``{"api": [pid], "scheduler": [...]}``."""

    def __init__(self, roles: Mapping[str, list[int]]) -> None:
        self.roles = {k: list(v) for k, v in roles.items()}
        self._start = self._sample()

    def _sample(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for role, pids in self.roles.items():
            values = [cpu_seconds(p) for p in pids]
            out[role] = None if not values or any(v is None for v in values) else sum(v for v in values if v)
        return out

    def stop(self, output_tokens: int) -> CpuSplit:
        end = self._sample()
        seconds = {role: None if (a := self._start[role]) is None or (b := end[role]) is None else b - a
                   for role in self.roles}
        return CpuSplit(seconds, output_tokens)
