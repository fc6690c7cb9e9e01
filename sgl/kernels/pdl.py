"""Programmatic dependent launch (PDL, NVIDIA Hopper and later): a kernel is launched while the one before it drains.

At batch-1 decode a step is hundreds of kernels of a few microseconds each, and the device sits idle between them:
on an H100 Qwen3-0.6B's decode graph kept the device busy 57% of the span, with the host not the cause
(docs/benchmarks.md, 2026-12-06). With PDL each kernel of the decode path is launched as a dependent of the previous
one: its programs are scheduled, and compute their indices, while the previous kernel finishes, and wait
(``griddepcontrol.wait``) before their first read or write. The wait returns once the previous kernel has completed
and its memory is visible, so the results are those of plain stream order.

NOTE: every kernel launched with PDL waits at its very top, before any load or store: a later kernel may only read
what an earlier one wrote once that one completed, and it must not overwrite a buffer the earlier one still reads
(split partials, tickets, the residual). Waiting first in every kernel also keeps the order transitive: kernel C
waits for B, which waited for A. Kernels that do not opt in (torch's, the vendor GEMMs) are ordinary launches:
they start after the previous kernel completes, and a PDL kernel after them finds nothing to wait for.

What no kernel of a step writes may be read before the wait: the skinny GEMM asks L2 for its first weight tiles
there (``prefetch_to_l2``), so the weights stream while the previous kernel drains.

The policy is process-wide (``configure``); the CUDA platform sets it from ``--cuda-pdl`` when it builds the decode
graphs. It applies only where the device can do it: a CUDA (not HIP) build of torch, compute capability 9.0 or later,
compiled kernels (never under TRITON_INTERPRET).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl

_enabled = False


def configure(enabled: bool) -> None:
    """Turns PDL launches of the decode-path kernels on or off for this process."""
    global _enabled
    _enabled = bool(enabled)


def enabled() -> bool:
    return _enabled


@functools.cache
def _device_supports(index: int) -> bool:
    return torch.version.hip is None and torch.cuda.get_device_capability(index)[0] >= 9


def supported(device: torch.device) -> bool:
    """Whether ``device`` can launch dependents: NVIDIA sm90+, compiled Triton."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return False
    return _device_supports(device.index if device.index is not None else torch.cuda.current_device())


def launch_options(t: torch.Tensor) -> dict[str, Any]:
    """The launch keywords of a PDL-aware kernel working on ``t``'s device: its ``USE_PDL`` constexpr and, when on,
    Triton's ``launch_pdl`` option."""
    if _enabled and supported(t.device):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}


@triton.jit
def wait_for_previous(USE_PDL: tl.constexpr):
    """A PDL-aware kernel's first statement: wait for the previous kernel, then let the next one launch.

    NOTE: letting the next kernel launch this early costs nothing in order (it waits for this kernel's completion,
    not for this signal); its programs only take the SM slots this kernel's programs leave free."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_to_l2(ptrs, mask):
    """Asks L2 for the lines at ``ptrs`` (masked-off lanes ask nothing): a hint, with no result and no fault.

    NOTE: for what no kernel of the step writes (weights), called before ``wait_for_previous``: a dependent GEMM's
    first weight tiles are on their way while the previous kernel drains, instead of after it."""
    tl.inline_asm_elementwise(
        asm="{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }",
        constraints="=r,l,r", args=[ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1,
    )
