"""The reference Sampler: logits in, next token ids (and optionally logprobs) out.

Order of operations, per row:
  1. logit bias, penalties, min-new-tokens and vocab masks (shared by greedy and sampling rows);
  2. greedy rows: argmax;
  3. sampling rows: / temperature -> softmax -> top-k -> top-p -> min-p -> draw.
Logprobs come from step 1's logits (see logprobs.py for why).

Draws use the exponential race (argmax of p / q with q ~ Exp(1)), which samples exactly from p and lets each seeded
row take its q from its own generator while every unseeded row shares one vectorised draw from the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from sgl.core.sampling.batch_info import SamplingBatchInfo
from sgl.core.sampling.logprobs import TopLogprobs, compute_prompt_logprobs, token_logprobs, top_logprobs
from sgl.core.sampling.penalties import apply_penalties

__all__ = ["SampleOutput", "Sampler", "compute_prompt_logprobs", "filter_probs", "process_logits"]


class SampleOutput(NamedTuple):
    next_token_ids: torch.Tensor  # [B] int64
    next_token_logprobs: torch.Tensor | None  # [B] float32, when return_logprob
    top_logprobs: TopLogprobs | None  # B entries, when return_logprob and top_logprobs_nums were given


def process_logits(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Step 1: bias, penalties and masks. Returns float32 logits; never writes into the caller's tensor."""
    as_float = logits.float()
    if not info.needs_logit_processing:
        return as_float
    # .float() returns the caller's tensor itself when it is already fp32; copy before writing.
    out = as_float.clone() if as_float is logits else as_float
    if info.logit_bias is not None:
        out += info.logit_bias
    if info.penalties is not None:
        apply_penalties(out, info.penalties)
    if info.min_tokens_mask is not None:
        out[info.min_tokens_mask.rows, info.min_tokens_mask.cols] = float("-inf")
    if info.vocab_mask is not None:
        out.masked_fill_(info.vocab_mask, float("-inf"))
    return out


def filter_probs(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Top-k, then top-p over the renormalised survivors, then min-p; dropped tokens get probability 0.

    NOTE: the most likely token always survives (top_p > 0, min_p <= 1, k >= 1), so every row keeps some mass.
    """
    if info.need_top_k or info.need_top_p:
        # A stable sort makes ties resolve by token id, the same whichever batch a row is in.
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        if info.need_top_k:
            position = torch.arange(probs.shape[-1], device=probs.device).view(1, -1)
            sorted_p = sorted_p.masked_fill(position >= info.top_ks.view(-1, 1), 0.0)
        if info.need_top_p:
            cumulative = sorted_p.cumsum(dim=-1)
            # A token is dropped when the tokens before it already hold top_p of the (top-k) mass.
            before = cumulative - sorted_p
            sorted_p = sorted_p.masked_fill(before > info.top_ps.view(-1, 1) * cumulative[:, -1:], 0.0)
        if info.need_min_p:
            sorted_p = sorted_p.masked_fill(sorted_p < sorted_p[:, :1] * info.min_ps.view(-1, 1), 0.0)
        return torch.zeros_like(probs).scatter_(1, order, sorted_p)
    if info.need_min_p:
        threshold = probs.amax(dim=-1, keepdim=True) * info.min_ps.view(-1, 1)
        return probs.masked_fill(probs < threshold, 0.0)
    return probs


def _exponential_noise(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """q ~ Exp(1) of probs' shape: seeded rows from their own generators, the rest from the global RNG."""
    noise = torch.empty_like(probs)
    seeded = info.seeded_rows
    if len(seeded) < probs.shape[0]:
        noise.exponential_()
    for row in seeded:
        seed = info.row_seeds[row]
        assert seed is not None
        generator = torch.Generator(device=probs.device)
        generator.manual_seed(seed)
        # NOTE: a fresh [V] draw, not one into a view of `noise`, so the numbers depend only on (seed, V).
        noise[row] = torch.empty(probs.shape[-1], device=probs.device).exponential_(generator=generator)
    # An exact 0 would turn p / q into inf (or NaN for p = 0) and could pick a dropped token.
    return noise.clamp_(min=torch.finfo(noise.dtype).tiny)


class Sampler:
    """Torch reference sampler; a platform may return a faster one that must give the same greedy tokens."""

    def __call__(
        self,
        logits: torch.Tensor,
        info: SamplingBatchInfo,
        return_logprob: bool = False,
        top_logprobs_nums: Sequence[int] | None = None,
    ) -> SampleOutput:
        if logits.dim() != 2 or logits.shape[0] != info.batch_size:
            raise ValueError(f"sampler expects logits [{info.batch_size}, V], got {list(logits.shape)}")
        logits = process_logits(logits, info)
        greedy_ids = logits.argmax(dim=-1)
        if info.all_greedy:
            next_ids = greedy_ids
        else:
            probs = torch.softmax(logits / info.temperatures, dim=-1)
            probs = filter_probs(probs, info)
            sampled = (probs / _exponential_noise(probs, info)).argmax(dim=-1)
            next_ids = torch.where(info.is_greedy, greedy_ids, sampled)
        if not return_logprob:
            return SampleOutput(next_ids, None, None)
        logprobs = torch.log_softmax(logits, dim=-1)
        top = top_logprobs(logprobs, top_logprobs_nums) if top_logprobs_nums is not None else None
        return SampleOutput(next_ids, token_logprobs(logprobs, next_ids), top)
