"""Result tables and JSON files: every bench prints rows of (label, value) and writes the same numbers as JSON."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple


class Summary(NamedTuple):
    """Mean, median and p99 of a latency sample (seconds); all NaN-free zeros for an empty sample."""

    mean: float
    median: float
    p99: float
    n: int  # sample size

    def as_ms(self) -> dict[str, float]:
        return {"mean_ms": self.mean * 1e3, "median_ms": self.median * 1e3, "p99_ms": self.p99 * 1e3}


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), without needing numpy."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(0.0, 0.0, 0.0, 0)
    return Summary(sum(values) / len(values), percentile(values, 50), percentile(values, 99), len(values))


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.2f}"
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.3f}"
    return str(value)


def format_kv(title: str, rows: Sequence[tuple[str, Any]], width: int = 60) -> str:
    """A two-column block, SGLang-style: a centred title between rules, then ``label .... value`` lines."""
    lines = [f" {title} ".center(width, "="), *(f"{k:<{width - 20}}{_fmt(v):>20}" for k, v in rows), "=" * width]
    return "\n".join(lines)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for j, r in enumerate(cells):
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_json(path: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    """Writes ``result`` (plain data) with sorted keys; the parent directory is created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
