"""Test helper (not a test): tiny random Hugging Face models on disk, and ForwardBatches over a paged KV pool.

Models are built by transformers itself (config class + from_config + save_pretrained), so the checkpoints have
exactly the names, layouts and config keys real ones have.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sgl.core.attention.base import AttentionBackend
from sgl.core.attention.torch_native import TorchNativeAttnBackend
from sgl.core.memory.kv_pool import KVPool
from sgl.core.memory.req_to_token import ReqToTokenPool
from sgl.core.model.config import ModelConfig
from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode

TINY: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
    "initializer_range": 0.08,
}

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # NOTE: with head_dim 16 and theta 1e4 the wavelengths span 6..2e4, so 32 puts frequencies in all three bands.
    "original_max_position_embeddings": 32,
}

ARCHS = ("llama", "llama3", "llama-tied", "mistral", "qwen2", "qwen3")


def _config(arch: str, overrides: dict[str, Any]) -> Any:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    kw: dict[str, Any] = dict(TINY)
    if arch == "llama":
        cls: Any = LlamaConfig
    elif arch == "llama3":
        cls, kw["rope_parameters"] = LlamaConfig, dict(LLAMA3_ROPE)
    elif arch == "llama-tied":
        cls, kw["tie_word_embeddings"] = LlamaConfig, True
    elif arch == "mistral":
        cls, kw["sliding_window"] = MistralConfig, None
    elif arch == "qwen2":
        cls, kw["use_sliding_window"] = Qwen2Config, False
    elif arch == "qwen3":
        # NOTE: head_dim 32 != hidden / heads (16), so a model that derives it instead of reading it fails.
        cls, kw["head_dim"], kw["use_sliding_window"] = Qwen3Config, 32, False
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; known: {', '.join(ARCHS)}")
    kw.update(overrides)
    return cls(**kw)


def make_tiny_hf_model(arch: str, path: str | os.PathLike[str], seed: int = 0, **overrides: Any) -> str:
    """Writes a tiny random fp32 HF model (config.json, generation_config.json, model.safetensors) to ``path``."""
    from transformers import AutoModelForCausalLM

    config = _config(arch, overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # NOTE: HF initialises norms to 1 and biases to 0; noise makes a norm or bias that fails to load show.
            if p.dim() == 1:
                base = 1.0 if "norm" in name else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
    path = os.fspath(path)
    model.save_pretrained(path)
    return path


def load_hf_model(path: str | os.PathLike[str]) -> Any:
    """The Hugging Face oracle for a tiny model: fp32, eager attention, eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.fspath(path), dtype=torch.float32, attn_implementation="eager")
    return model.eval()


@dataclass
class PagedKV:
    """A KV pool, its request table and a backend, with a shuffled free list so slots are never contiguous."""

    kv_pool: KVPool
    req_to_token_pool: ReqToTokenPool
    backend: AttentionBackend
    free_slots: list[int] = field(default_factory=list)

    def alloc(self, n: int) -> torch.Tensor:
        if n > len(self.free_slots):
            raise RuntimeError(f"test KV pool exhausted: need {n}, have {len(self.free_slots)}")
        taken, self.free_slots = self.free_slots[:n], self.free_slots[n:]
        return torch.tensor(taken, dtype=torch.int64)


def make_paged_kv(
    config: ModelConfig,
    num_slots: int = 1024,
    max_reqs: int = 8,
    max_context: int = 256,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    backend: AttentionBackend | None = None,
    num_kv_heads: int | None = None,
) -> PagedKV:
    """``num_kv_heads`` is this rank's count under tensor parallelism (default: the config's)."""
    pool = KVPool(num_slots, 1, config.num_layers, num_kv_heads or config.num_kv_heads, config.head_dim, dtype)
    free = list(range(1, num_slots + 1))  # NOTE: slot 0 is the padding sink, never handed out
    random.Random(seed).shuffle(free)
    return PagedKV(pool, ReqToTokenPool(max_reqs, max_context), backend or TorchNativeAttnBackend(None), free)


def build_forward_batch(
    paged: PagedKV,
    req_pool_indices: Sequence[int],
    prefix_lens: Sequence[int],
    new_token_ids: Sequence[Sequence[int]],
    mode: ForwardMode | None = None,
) -> ForwardBatch:
    """One step for requests whose first ``prefix_lens[i]`` tokens are already in the pool (rows of req_to_token).

    Allocates a slot per new token, writes it into req_to_token after the prefix, and fills every ForwardBatch
    field. ``mode`` defaults to DECODE when every request adds exactly one token to a non-empty prefix, else EXTEND.
    """
    ext = [len(t) for t in new_token_ids]
    if mode is None:
        mode = ForwardMode.DECODE if all(n == 1 for n in ext) and all(p > 0 for p in prefix_lens) else ForwardMode.EXTEND
    locs, positions = [], []
    for r, p, n in zip(req_pool_indices, prefix_lens, ext):
        slots = paged.alloc(n)
        paged.req_to_token_pool.write(r, p, slots)
        locs.append(slots)
        positions.append(torch.arange(p, p + n, dtype=torch.int64))
    seq_lens = [p + n for p, n in zip(prefix_lens, ext)]
    starts = [sum(ext[:i]) for i in range(len(ext))]
    fb = ForwardBatch(
        forward_mode=mode,
        batch_size=len(ext),
        input_ids=torch.tensor([t for ids in new_token_ids for t in ids], dtype=torch.int64),
        positions=torch.cat(positions),
        req_pool_indices=torch.tensor(list(req_pool_indices), dtype=torch.int64),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int64),
        out_cache_loc=torch.cat(locs),
        seq_lens_cpu=seq_lens,
        req_to_token_pool=paged.req_to_token_pool,
        kv_pool=paged.kv_pool,
        attn_backend=paged.backend,
        extend_prefix_lens=torch.tensor(list(prefix_lens), dtype=torch.int64),
        extend_seq_lens=torch.tensor(ext, dtype=torch.int64),
        extend_start_loc=torch.tensor(starts, dtype=torch.int64),
        extend_prefix_lens_cpu=list(prefix_lens),
        extend_seq_lens_cpu=ext,
    )
    paged.backend.init_forward_metadata(fb)
    return fb
