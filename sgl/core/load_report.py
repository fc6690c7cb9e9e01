"""The summary logged once the engine is ready: what was loaded, where, and how much memory it took.

It is the first thing a user reads when a server or ``sgl.Engine`` starts, and the first thing asked for in a bug
report, so every number in it is read from the built objects rather than from the flags that asked for them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

GiB = 1024**3
MAX_LISTED_SIZES = 8


class LoadReport(NamedTuple):
    platform: str
    device: str
    architecture: str
    dtype: str
    weights_bytes: int
    kv_tokens: int
    kv_bytes: int
    kv_dtype: str
    max_running_requests: int
    graph_batch_sizes: tuple[int, ...] | None  # None: graphs off; () when the graph runner does not say
    attention_backend: str
    overlap: bool
    load_seconds: float

    def lines(self) -> list[str]:
        return [
            f"loaded {self.architecture} on {self.platform} ({self.device}) in {self.load_seconds:.1f} s: "
            f"dtype {self.dtype}, weights {gib(self.weights_bytes)} GiB",
            f"KV pool {self.kv_tokens} tokens ({gib(self.kv_bytes)} GiB, {self.kv_dtype}), "
            f"max running requests {self.max_running_requests}, attention {self.attention_backend}, "
            f"graphs {describe_graphs(self.graph_batch_sizes)}, overlap schedule {'on' if self.overlap else 'off'}",
        ]


def gib(n: int) -> str:
    """Two decimals, but never a bare 0.00 for a small (demo) model: three significant digits below 1 GiB."""
    x = n / GiB
    return f"{x:.2f}" if x >= 1 else f"{x:.3g}"


def describe_graphs(sizes: Sequence[int] | None) -> str:
    if sizes is None:
        return "off"
    if not sizes:
        return "on"
    if len(sizes) <= MAX_LISTED_SIZES:
        return "batch sizes " + ", ".join(map(str, sizes))
    head = ", ".join(map(str, sizes[:4]))
    return f"batch sizes {head}, ..., {sizes[-1]} ({len(sizes)} sizes)"


def _short(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def build_report(runner: Any, platform_name: str, overlap: bool, load_seconds: float) -> LoadReport:
    """``runner`` is a ModelRunner (typed loosely: this module stays importable without building one)."""
    weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    graphs = runner.graph_runner
    sizes = None if graphs is None else tuple(getattr(graphs, "sizes", ()))
    return LoadReport(
        platform=platform_name, device=str(runner.device), architecture=runner.model_config.architecture,
        dtype=_short(runner.dtype), weights_bytes=weights, kv_tokens=runner.max_total_tokens,
        kv_bytes=runner.max_total_tokens * runner.plan.bytes_per_token, kv_dtype=_short(runner.kv_dtype),
        max_running_requests=runner.max_running_requests, graph_batch_sizes=sizes,
        attention_backend=runner.attention_backend_name, overlap=overlap, load_seconds=load_seconds,
    )


def log_report(report: LoadReport) -> None:
    for line in report.lines():
        logger.info("%s", line)
