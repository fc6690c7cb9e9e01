"""A compiled-PyTorch batch-1 decode peer: the same-lease peer figure for sgl's batch-1 decode.

python -m benchmarks.compiled_peer [qwen3-0.6b llama-3.1-8b ...] [--tokens 256] [--no-compile] [--device cuda|cpu]
                                   [--layers N]

Why it exists: sgl's batch-1 decode (``benchmarks/decode_speed.py``) needs a peer timed on the same lease, on the
same card, with the same config and workload (issue: "Record gpt-fast in the same lease as the peer"). This file
is gpt-fast's *recipe*, not gpt-fast itself: a plain-PyTorch transformer of the shipped config
(``sgl/core/model/configs/MODEL.json``) with random bf16 weights (seeded, made on the device, no checkpoint), a
static preallocated KV cache ``[layers, max_seq, kv_heads, head_dim]`` and a one-token decode step compiled with
``torch.compile(mode="reduce-overhead", fullgraph=True)`` (CUDA graphs); greedy argmax. Written here from
scratch, no gpt-fast code.

Workload as ``decode_speed.batch1_decode_tok_s``: a 128-token prompt (prefilled eagerly, not timed), then
``--tokens`` greedy decode steps, timed 3 times from the same position. One JSON line per model:
``{"model", "peer", "decode_tok_s" (median of 3), "runs", "compile_s"}``. sgl's own figure is the best of 3, so
compare with ``max(runs)`` where that matters.

``--layers N`` overrides ``num_hidden_layers`` (a quick CPU check); ``--no-compile`` runs the step eagerly.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CONFIGS = Path(__file__).resolve().parents[1] / "sgl" / "core" / "model" / "configs"
PEER = "compiled-torch (gpt-fast style)"
PROMPT = list(range(100, 228))  # the 128-token prompt of decode_speed.batch1_decode_tok_s


def load_config(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def rope_inv_freq(cfg: dict[str, Any], head_dim: int) -> torch.Tensor:
    """Inverse frequencies (fp32), with llama3 ``rope_scaling`` applied when the config has it."""
    theta = float(cfg.get("rope_theta", 10000.0))
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "llama3":
        factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        smooth = ((old / wavelen - lo) / (hi - lo)).clamp(0.0, 1.0)
        # long wavelengths (> old/lo): divided by factor; short (< old/hi): kept; between: interpolated
        inv = (1 - smooth) * inv / factor + smooth * inv
    elif kind not in (None, "default"):
        raise NotImplementedError(f"rope_scaling {kind!r}")
    return inv.float()


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, hd]; cos/sin [T, hd/2] (fp32). Rotates halves (the HF llama/qwen layout)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


class Peer(nn.Module):
    """Llama / Qwen3 decoder with random weights and a static KV cache."""

    def __init__(self, cfg: dict[str, Any], device: torch.device | str, dtype: torch.dtype, max_seq: int,
                 seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden = h = cfg["hidden_size"]
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads", self.n_heads)
        self.head_dim = hd = cfg.get("head_dim") or h // self.n_heads
        self.eps = float(cfg["rms_norm_eps"])
        self.qk_norm = cfg.get("model_type") == "qwen3"
        self.max_seq = max_seq
        inter, vocab = cfg["intermediate_size"], cfg["vocab_size"]
        q_out, kv_out = self.n_heads * hd, self.n_kv * hd
        gen = torch.Generator(device=device).manual_seed(seed)
        std = float(cfg.get("initializer_range", 0.02))

        def w(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=gen, device=device, dtype=dtype) * std,
                                requires_grad=False)

        def ones(n: int) -> nn.Parameter:
            return nn.Parameter(torch.ones(n, device=device, dtype=dtype), requires_grad=False)

        self.embed = w(vocab, h)
        self.layers = nn.ModuleList()
        for _ in range(self.n_layers):
            layer = nn.Module()
            layer.attn_norm, layer.mlp_norm = ones(h), ones(h)
            layer.wqkv = w(q_out + 2 * kv_out, h)  # q, k, v projections fused in one GEMM
            layer.wo = w(h, q_out)
            layer.w13 = w(2 * inter, h)  # gate and up fused
            layer.w2 = w(h, inter)
            if self.qk_norm:
                layer.q_norm, layer.k_norm = ones(hd), ones(hd)
            self.layers.append(layer)
        self.norm = ones(h)
        self.lm_head = self.embed if cfg.get("tie_word_embeddings", False) else w(vocab, h)
        self.register_buffer("k_cache", torch.zeros(self.n_layers, max_seq, self.n_kv, hd, device=device,
                                                    dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros_like(self.k_cache), persistent=False)
        freqs = torch.outer(torch.arange(max_seq, dtype=torch.float32), rope_inv_freq(cfg, hd)).to(device)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)
        self.register_buffer("causal", torch.ones(max_seq, max_seq, dtype=torch.bool, device=device).tril(),
                             persistent=False)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, use_cache: bool = True) -> torch.Tensor:
        """tokens, pos [T] -> logits [T, vocab] (fp32). ``use_cache``: write K/V at ``pos`` and attend over the
        static cache under a mask; otherwise (the oracle) plain causal attention over these T tokens only."""
        T, hd, nh, nkv = tokens.shape[0], self.head_dim, self.n_heads, self.n_kv
        x = F.embedding(tokens, self.embed)
        cos, sin = self.cos[pos], self.sin[pos]
        mask = self.causal[pos][None, None] if use_cache else None  # [1, 1, T, max_seq]
        for i, layer in enumerate(self.layers):
            q, k, v = F.linear(rms_norm(x, layer.attn_norm, self.eps), layer.wqkv).split(
                [nh * hd, nkv * hd, nkv * hd], dim=-1)
            q, k, v = q.view(T, nh, hd), k.view(T, nkv, hd), v.view(T, nkv, hd)
            if self.qk_norm:
                q, k = rms_norm(q, layer.q_norm, self.eps), rms_norm(k, layer.k_norm, self.eps)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if use_cache:
                self.k_cache[i].index_copy_(0, pos, k)
                self.v_cache[i].index_copy_(0, pos, v)
                k, v = self.k_cache[i], self.v_cache[i]  # [max_seq, kv, hd]
            o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                               v.transpose(0, 1)[None], attn_mask=mask,
                                               is_causal=not use_cache, enable_gqa=True)
            x = x + F.linear(o[0].transpose(0, 1).reshape(T, nh * hd), layer.wo)
            gate, up = F.linear(rms_norm(x, layer.mlp_norm, self.eps), layer.w13).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.w2)
        return F.linear(rms_norm(x, self.norm, self.eps), self.lm_head).float()


def build(cfg: dict[str, Any], device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
          max_seq: int = 512, seed: int = 0) -> Peer:
    with torch.no_grad():
        return Peer(cfg, device, dtype, max_seq, seed).eval()


def make_step(model: Peer, compile: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One greedy decode step: (token [1], pos [1]) -> next token [1]; compiled with CUDA graphs if asked."""

    def step(token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return model(token, pos).argmax(dim=-1)

    if not compile:
        return step
    import torch._inductor.config as ind

    ind.coordinate_descent_tuning = True  # the recipe's tuning flags
    ind.triton.unique_kernel_names = True
    return torch.compile(step, mode="reduce-overhead", fullgraph=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], first: torch.Tensor, start: int,
           n: int, device: torch.device) -> torch.Tensor:
    """n greedy steps from token ``first`` at position ``start``; the tokens stay on the device until the end."""
    out = torch.empty(n, dtype=torch.long, device=device)
    tok, pos = first, torch.tensor([start], dtype=torch.long, device=device)
    for i in range(n):
        tok = step(tok, pos).clone()  # NOTE: a CUDA graph's output is overwritten by its next replay
        out[i] = tok[0]
        pos = pos + 1
    return out


@torch.no_grad()
def run(name: str, tokens: int, compile: bool, device: torch.device, layers: int | None = None) -> dict[str, Any]:
    cfg = load_config(name)
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    max_seq = -(-(len(PROMPT) + tokens + 1) // 128) * 128
    model = build(cfg, device, torch.bfloat16, max_seq)
    prompt = torch.tensor(PROMPT, dtype=torch.long, device=device)
    first = model(prompt, torch.arange(len(PROMPT), device=device))[-1:].argmax(dim=-1)  # eager prefill
    step = make_step(model, compile)
    _sync(device)
    t0 = time.perf_counter()
    decode(step, first, len(PROMPT), min(tokens, 8), device)  # warm-up: compiles and records the graphs
    _sync(device)
    compile_s = time.perf_counter() - t0
    runs = []
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        decode(step, first, len(PROMPT), tokens, device)
        _sync(device)
        runs.append(round(tokens / (time.perf_counter() - t0), 1))
    out = {"model": name, "peer": PEER, "decode_tok_s": statistics.median(runs), "runs": runs,
           "compile_s": round(compile_s, 1), "compiled": compile, "device": str(device),
           "torch": torch.__version__}
    if layers is not None:
        out["layers"] = layers
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["qwen3-0.6b", "llama-3.1-8b"])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (quick checks)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    for name in a.models:
        print(json.dumps(run(name, a.tokens, not a.no_compile and device.type == "cuda", device, a.layers)),
              flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
