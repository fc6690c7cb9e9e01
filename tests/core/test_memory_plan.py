"""The auto-sized KV pool: the whole budget on an accelerator (capped where device memory is the host's RAM), in
tokens of the KV cache's dtype."""

from __future__ import annotations

from typing import ClassVar

import torch

from sgl.core.config import ServerArgs
from sgl.core.platform import Capabilities, Platform
from sgl.core.runner.memory_plan import MAX_AUTO_CONTEXTS, plan_memory


class _Accelerator(Platform):
    """64 MiB of device memory, all free."""

    name = "accelerator"
    device_type = "meta"  # not "cpu", whose memory is the host's

    def total_memory(self) -> int:
        return 64 << 20

    def free_memory(self) -> int:
        return 64 << 20


class _HostMemory(_Accelerator):
    name = "host-memory"
    capabilities: ClassVar[Capabilities] = Capabilities(host_memory=True)


class _CpuDevice(_Accelerator):
    name = "cpu-device"
    device_type = "cpu"


def _tokens(platform: Platform, context_len: int, kv_dtype: torch.dtype = torch.float32) -> int:
    plan = plan_memory(ServerArgs(mem_fraction_static=0.5), platform, num_layers=2, num_kv_heads=2, head_dim=16,
                       kv_dtype=kv_dtype, context_len=context_len, weight_bytes=0)
    assert plan.max_total_tokens * plan.bytes_per_token <= 32 << 20
    return plan.max_total_tokens


def test_an_accelerator_pool_takes_the_whole_budget_even_past_the_host_cap() -> None:
    per_token = 2 * 2 * 2 * 16 * 4
    budget_tokens = (32 << 20) // per_token
    context = 16
    assert budget_tokens > context * MAX_AUTO_CONTEXTS  # the host cap would bind here
    assert _tokens(_Accelerator(), context) == budget_tokens
    assert _tokens(_HostMemory(), context) == context * MAX_AUTO_CONTEXTS
    assert _tokens(_CpuDevice(), context) == context * MAX_AUTO_CONTEXTS  # a third party's cpu platform too


def test_the_same_budget_holds_twice_the_tokens_of_bf16_in_fp8() -> None:
    def tokens(dtype: torch.dtype) -> int:
        return _tokens(_Accelerator(), 1 << 20, dtype)

    assert tokens(torch.float8_e4m3fn) == tokens(torch.float8_e5m2) == 2 * tokens(torch.bfloat16)
    assert tokens(torch.float8_e4m3fn) == 4 * tokens(torch.float32) == (32 << 20) // (2 * 2 * 2 * 16)
