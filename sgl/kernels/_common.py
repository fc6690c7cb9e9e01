"""Helpers shared by the kernel wrappers: launch sizing and the interpreter's dtype workaround."""

from __future__ import annotations

import functools

import torch
import triton


def upcast_dot(t: torch.Tensor) -> bool:
    """Whether tl.dot operands must be cast to fp32 first.

    NOTE: under TRITON_INTERPRET (CPU tensors) tl.dot on bf16 operands returns garbage, so the CPU path upcasts; on a
    device the dot runs in the storage dtype on the tensor cores with fp32 accumulation.
    """
    return t.device.type == "cpu"


def fp8_kv_as_fp16(q: torch.Tensor, k_buffer: torch.Tensor) -> bool:
    """Whether the attention kernels widen an fp8 KV cache to fp16 (not to q's bf16) and run their dots in fp16.

    NOTE: fp8 -> fp16 is one hardware conversion per two values (sm89+), while fp8 -> bf16 goes through fp32 and
    costs four times as many: on the H200 that conversion, not memory, bounded the fp8 decode kernel. fp16 holds
    every fp8 value exactly; q is clamped to fp16's range first. Off-device (the interpreter) the fp32 path is kept.
    """
    return k_buffer.element_size() == 1 and not upcast_dot(q)


def dot_precision(t: torch.Tensor) -> str | None:
    """tl.dot input precision: full fp32 for fp32 activations; the target's default (None) otherwise."""
    return "ieee" if t.dtype == torch.float32 else None


def block_size(n: int) -> int:
    return int(triton.next_power_of_2(max(int(n), 1)))


def rows_2d(x: torch.Tensor) -> torch.Tensor:
    """Views x as [rows, last] without a copy when possible; the last dim must be contiguous for the kernels."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2


@functools.cache
def _sm_count(device_type: str, index: int) -> int:
    if device_type == "cuda":
        return int(torch.cuda.get_device_properties(index).multi_processor_count)
    return 8


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the device (a small constant off-device, where it only shapes test grids)."""
    index = device.index
    if index is None:
        index = torch.cuda.current_device() if device.type == "cuda" else 0
    return _sm_count(device.type, index)


def elementwise_warps(block: int) -> int:
    return max(1, min(8, block // 512))
