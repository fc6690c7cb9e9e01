"""Stand-ins for vendor runtimes: ``aiter`` (AMD), ``torch_npu`` and ``torch.npu`` (Huawei).

Each is a STAND-IN, not the vendor's code: a few functions with the vendor's documented names, arguments and layouts,
computed in plain torch on the CPU. They let the tests check sgl's side (how it lays out the KV pool for the kernel,
which arguments it passes, which path it chooses); they prove nothing about the vendor's kernels.
"""

from __future__ import annotations

import importlib.machinery
import types
from typing import Any

import torch


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # NOTE: find_spec reads it from sys.modules
    module.__doc__ = f"STAND-IN for {name} (tests/platforms/standins.py)"
    return module


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, hidden_mask: torch.Tensor | None
) -> torch.Tensor:
    """q [n, H, D], k/v [s, KVH, D] -> [n, H, D] in fp32; hidden_mask [n, s] True hides a key."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,shd->hns", q.float(), k) * scale
    if hidden_mask is not None:
        scores = scores.masked_fill(hidden_mask[None], float("-inf"))
    return torch.einsum("hns,shd->nhd", scores.softmax(-1), v)


# aiter ---------------------------------------------------------------------------------------------------------------
def standin_aiter(calls: list[dict[str, Any]] | None = None) -> types.ModuleType:
    """aiter's ``paged_attention_ragged`` (page table as indptr/indices/last-page lengths, "NHD" cache layout
    [pages, page_size, KVH, D]) and its RMSNorm entry points; ``calls`` records the arguments sgl passed."""
    aiter = _module("aiter")

    def paged_attention_ragged(out, workspace_buffer, query, key_cache, value_cache, scale, kv_indptr,
                               kv_page_indices, kv_last_page_lens, block_size, max_num_partitions, alibi_slopes,
                               kv_cache_dtype, kv_cache_layout, logits_soft_cap, k_scale, v_scale,
                               fp8_out_scale=None, partition_size=256, mtp=1):  # type: ignore[no-untyped-def]
        assert kv_cache_layout == "NHD" and key_cache.dim() == 4 and key_cache.shape[1] == block_size
        if calls is not None:
            calls.append({"block_size": block_size, "kv_cache_dtype": kv_cache_dtype,
                          "max_num_partitions": max_num_partitions, "workspace": workspace_buffer.numel()})
        for b in range(query.shape[0]):
            pages = kv_page_indices[kv_indptr[b]:kv_indptr[b + 1]].long()
            last = int(kv_last_page_lens[b])
            k = key_cache[pages].float() * float(k_scale)  # [P, page, KVH, D]
            v = value_cache[pages].float() * float(v_scale)
            k = torch.cat([k[:-1].flatten(0, 1), k[-1, :last]]) if len(pages) else k.flatten(0, 1)
            v = torch.cat([v[:-1].flatten(0, 1), v[-1, :last]]) if len(pages) else v.flatten(0, 1)
            out[b] = _attend(query[b : b + 1], k, v, scale, None)[0].to(out.dtype)
        return out

    def rms_norm(x, weight, eps, use_model_sensitive_rmsnorm=0):  # type: ignore[no-untyped-def]
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)

    def rmsnorm2d_fwd_with_add(out, x, residual_in, residual_out, weight, eps):  # type: ignore[no-untyped-def]
        residual_out.copy_(x + residual_in)
        out.copy_(rms_norm(residual_out, weight, eps))

    aiter.paged_attention_ragged = paged_attention_ragged
    aiter.rms_norm = rms_norm
    aiter.rmsnorm2d_fwd_with_add = rmsnorm2d_fwd_with_add
    return aiter


def unrelated_pypi_aiter() -> types.ModuleType:
    """STAND-IN for the unrelated PyPI package that is also called ``aiter``: it has none of AMD's functions."""
    module = _module("aiter")
    module.run = lambda *a, **k: None
    return module


# torch_npu -----------------------------------------------------------------------------------------------------------
def standin_torch_npu(calls: list[dict[str, Any]] | None = None, scale_keyword: str = "scale") -> types.ModuleType:
    """torch_npu's fused inference attention ("BSH" layout, bool atten_mask where True masks a key out, GQA through
    num_key_value_heads), npu_rms_norm -> (y, rstd), npu_add_rms_norm -> (y, rstd, x + residual) and npu_rotary_mul
    (x * r1 + rotate_half(x) * r2)."""
    npu = _module("torch_npu")

    def npu_fused_infer_attention_score(query, key, value, *, atten_mask=None, num_heads=1, num_key_value_heads=0,
                                        input_layout="BSH", **kwargs):  # type: ignore[no-untyped-def]
        assert input_layout == "BSH" and query.dim() == 3 and query.shape[0] == 1
        scale = kwargs.pop(scale_keyword)
        assert not kwargs, f"unexpected arguments {sorted(kwargs)}"
        kv_heads = num_key_value_heads or num_heads
        n, s = query.shape[1], key.shape[1]
        q = query[0].view(n, num_heads, -1)
        k, v = key[0].view(s, kv_heads, -1), value[0].view(s, kv_heads, -1)
        mask = None if atten_mask is None else atten_mask.reshape(n, s)
        if calls is not None:
            calls.append({"n": n, "s": s, "mask": mask is not None, "num_heads": num_heads, "kv_heads": kv_heads})
        out = _attend(q, k, v, scale, mask).to(query.dtype).reshape(1, n, -1)
        return out, torch.empty(0)

    def npu_rms_norm(x, gamma, epsilon=1e-6):  # type: ignore[no-untyped-def]
        h = x.float()
        rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + epsilon)
        return (h * rstd).to(x.dtype) * gamma, rstd

    def npu_add_rms_norm(x1, x2, gamma, epsilon=1e-6):  # type: ignore[no-untyped-def]
        summed = x1 + x2
        y, rstd = npu_rms_norm(summed, gamma, epsilon)
        return y, rstd, summed

    def npu_rotary_mul(x, r1, r2):  # type: ignore[no-untyped-def]
        x1, x2 = x.chunk(2, dim=-1)
        return x * r1 + torch.cat((-x2, x1), dim=-1) * r2

    npu.npu_fused_infer_attention_score = npu_fused_infer_attention_score
    npu.npu_rms_norm = npu_rms_norm
    npu.npu_add_rms_norm = npu_add_rms_norm
    npu.npu_rotary_mul = npu_rotary_mul
    return npu


def standin_torch_dot_npu(total: int = 64 << 30, free: int = 60 << 30, graphs: bool = True) -> types.ModuleType:
    """``torch.npu`` as torch_npu adds it: device count, memory info, sync; NPU graphs only when ``graphs``."""
    npu = _module("torch.npu")
    state: dict[str, Any] = {"device": 0, "synced": 0, "seed": None}
    npu.state = state
    npu.is_available = lambda: True
    npu.set_device = lambda i: state.__setitem__("device", i)
    npu.current_device = lambda: state["device"]
    npu.mem_get_info = lambda i=None: (free, total)
    npu.synchronize = lambda: state.__setitem__("synced", state["synced"] + 1)
    npu.empty_cache = lambda: None
    npu.manual_seed_all = lambda seed: state.__setitem__("seed", seed)
    npu.get_device_name = lambda i=None: "Ascend stand-in"
    if graphs:
        npu.NPUGraph = lambda: "graph"
        npu.graph = lambda graph, pool=None, stream=None: ("capture", graph, pool, stream)
        npu.graph_pool_handle = lambda: "pool"
    return npu


# torch.xpu -----------------------------------------------------------------------------------------------------------
def standin_torch_dot_xpu(total: int = 48 << 30, free: int = 40 << 30, graphs: bool = True) -> types.ModuleType:
    """``torch.xpu`` of an XPU build of PyTorch with one Intel GPU; XPU graphs only when ``graphs``."""
    xpu = _module("torch.xpu")
    state: dict[str, Any] = {"device": 0, "seed": None}
    xpu.state = state
    xpu._is_compiled = lambda: True
    xpu.is_available = lambda: True
    xpu.set_device = lambda i: state.__setitem__("device", i)
    xpu.current_device = lambda: state["device"]
    xpu.get_device_properties = lambda i=None: types.SimpleNamespace(total_memory=total)
    xpu.mem_get_info = lambda i=None: (free, total)
    xpu.manual_seed_all = lambda seed: state.__setitem__("seed", seed)
    xpu.get_device_name = lambda i=None: "Intel GPU stand-in"
    if graphs:
        xpu.XPUGraph = lambda: "graph"
        xpu.graph = lambda graph, pool=None, stream=None: ("capture", graph, pool, stream)
        xpu.graph_pool_handle = lambda: "pool"
    return xpu
