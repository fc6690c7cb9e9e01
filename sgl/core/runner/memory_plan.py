"""How many KV slots and request slots fit, from --max-total-tokens or --mem-fraction-static."""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from sgl.core.config import ServerArgs
from sgl.core.memory.kv_pool import KVPool
from sgl.core.platform import Platform

logger = logging.getLogger(__name__)

GiB = 1024**3
# NOTE: without an explicit --max-total-tokens a platform whose "device memory" is all of RAM (host_memory) gets a
# pool of at most this many full contexts: a fraction of RAM would otherwise be far more than any workload can
# use. An accelerator's pool is never capped: its size is what large batches are made of.
MAX_AUTO_CONTEXTS = 64


class MemoryPlan(NamedTuple):
    max_total_tokens: int
    max_running_requests: int
    bytes_per_token: int


def plan_memory(
    args: ServerArgs,
    platform: Platform,
    *,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    kv_dtype: torch.dtype,
    context_len: int,
    weight_bytes: int,
    bytes_per_token: int | None = None,
) -> MemoryPlan:
    """``bytes_per_token``, when given, is the model's own KV layout's (MLA's latent cache), else K and V heads'."""
    per_token = bytes_per_token or KVPool.bytes_per_token(num_layers, num_kv_heads, head_dim, kv_dtype)
    page = args.page_size
    if args.max_total_tokens is not None:
        tokens = args.max_total_tokens
    else:
        # NOTE: blocks an earlier engine in this process freed may still sit in the framework's allocator cache,
        # counted as used: hand them back first, or a second engine (--compare-radix) finds no room for its pool
        platform.empty_cache()
        free = platform.free_memory()
        reserve = platform.total_memory() * (1.0 - args.mem_fraction_static)
        budget = free - reserve
        tokens = int(budget // per_token) if budget > 0 else 0
        if tokens < max(page, 64):
            raise MemoryError(
                f"not enough memory for the KV cache: the model's weights take {weight_bytes / GiB:.2f} GiB, "
                f"{free / GiB:.2f} GiB is free and --mem-fraction-static {args.mem_fraction_static} keeps "
                f"{reserve / GiB:.2f} GiB back; lower the model size or raise --mem-fraction-static"
            )
        if platform.capabilities.host_memory or platform.device_type == "cpu":  # a "cpu" device is host RAM
            tokens = min(tokens, context_len * MAX_AUTO_CONTEXTS)
    tokens = max(page, tokens // page * page)
    running = args.max_running_requests or max(1, min(1024, tokens // 64))
    logger.info(
        "KV pool: %d tokens (%.2f GiB, %d B/token, %s), up to %d running requests",
        tokens, tokens * per_token / GiB, per_token, str(kv_dtype).replace("torch.", ""), running,
    )
    return MemoryPlan(tokens, running, per_token)
