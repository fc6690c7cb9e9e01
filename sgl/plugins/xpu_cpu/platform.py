"""CpuPlatform: every factory is the core's torch reference; it is the fallback when nothing else is available."""

from __future__ import annotations

import logging
import os
from typing import ClassVar

import torch

from sgl.core.env import EnvVar
from sgl.core.platform import Capabilities, Platform

logger = logging.getLogger(__name__)

THREADS = EnvVar(
    "SGL_CPU_THREADS", None,
    "torch intra-op threads of a CPU engine (default: the usable cores less one, left to the engine's host threads)",
)


def intra_op_threads(cores: int, configured: str | None, omp_set: bool) -> int | None:
    """How many threads torch's CPU kernels get; None leaves torch's choice (the user set OMP_NUM_THREADS).

    NOTE: the engine's own threads (scheduler loop, request manager, detokenisation, the server's event loop) are
    busy every step; an OpenMP pool as wide as the machine then competes with them for every core and its workers
    spin-wait at each barrier. On a 2-core machine the demo model's offline decode ran 3.1x faster with one
    intra-op thread than with two (docs/benchmarks.md, CPU).
    """
    if configured is not None:
        n = int(configured)
        if n < 1:
            raise ValueError(f"{THREADS.name} must be >= 1, got {configured!r}")
        return n
    if omp_set:
        return None
    return max(1, cores - 1)


class CpuPlatform(Platform):
    name: ClassVar[str] = "cpu"
    device_type: ClassVar[str] = "cpu"
    dist_backend: ClassVar[str] = "gloo"
    capabilities: ClassVar[Capabilities] = Capabilities(bf16=True, host_memory=True)
    probe_priority: ClassVar[int] = 1000
    verified_on_hardware: ClassVar[bool] = True  # every CI run is on a CPU

    @classmethod
    def is_available(cls) -> bool:
        return True

    def set_device(self, index: int) -> None:
        """Sizes torch's intra-op thread pool for a serving process (see ``intra_op_threads``)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = intra_op_threads(cores, THREADS.get(), "OMP_NUM_THREADS" in os.environ)
        if threads is not None and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            logger.info("cpu: torch runs on %d thread(s) of %d usable cores (%s sets it)", threads, cores, THREADS.name)
