"""The radix cache keeps namespaces apart (a LoRA adapter's KV is never another's or the base model's), while one
namespace still shares its prefixes, and the KV ledger stays exact across namespaces."""

from __future__ import annotations

import pytest

from sgl.core.cache.radix_cache import RadixCache
from sgl.core.memory.allocator import TokenAllocator
from sgl.core.memory.req_to_token import ReqToTokenPool


@pytest.mark.parametrize("page_size", [1, 4])
def test_namespaces_never_match_each_other(page_size: int) -> None:
    alloc = TokenAllocator(128, page_size)
    cache = RadixCache(ReqToTokenPool(4, 64), alloc, page_size)
    tokens = list(range(1, 17))
    base_kv = alloc.alloc(16)
    adapter_kv = alloc.alloc(16)
    assert cache.insert(tokens, base_kv) == 0
    assert cache.match_prefix(tokens, namespace=7).kv_indices.numel() == 0
    assert cache.insert(tokens, adapter_kv, namespace=7) == 0, "an adapter's insert reused the base model's entry"
    assert cache.match_prefix(tokens, namespace=7).kv_indices.tolist() == adapter_kv.tolist()
    assert cache.match_prefix(tokens).kv_indices.tolist() == base_kv.tolist()
    assert cache.match_prefix(tokens[:8], namespace=8).kv_indices.numel() == 0
    assert cache.match_prefix(tokens[:8], namespace=7).kv_indices.numel() == 8
    cache.check_invariant()
    assert cache.evict(32).num_evicted == 32
    assert alloc.available_size() == alloc.size
    cache.check_invariant()
