"""Logprobs of chosen tokens and their top alternatives, for decode outputs and for prompts.

NOTE: logprobs are the log_softmax of the logits AFTER logit bias, penalties and masks but BEFORE temperature and
top-k/top-p/min-p: they describe the model's (adjusted) distribution, not the truncated one a token was drawn from.
That is SGLang's and OpenAI's convention, and it keeps a token's logprob independent of the sampling knobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

# One entry per row: (logprobs, token ids), best first.
TopLogprobs = list[tuple[list[float], list[int]]]


def top_logprobs(logprobs: torch.Tensor, nums: Sequence[int]) -> TopLogprobs:
    """The nums[i] most likely tokens of row i of logprobs [B, V], sorted by logprob descending.

    One topk over the batch's largest k, then per-row slices: the only Python work is building the result lists.
    """
    if len(nums) != logprobs.shape[0]:
        raise ValueError(f"top_logprobs got {len(nums)} counts for {logprobs.shape[0]} rows")
    k = min(max(nums, default=0), logprobs.shape[-1])
    if k <= 0:
        return [([], []) for _ in nums]
    values, indices = logprobs.topk(k, dim=-1, largest=True, sorted=True)
    values_l: list[list[float]] = values.tolist()
    indices_l: list[list[int]] = indices.tolist()
    return [(values_l[i][:n], indices_l[i][:n]) for i, n in enumerate(nums)]


def token_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """[B] logprob of token_ids[i] in row i of logprobs [B, V]."""
    return logprobs.gather(1, token_ids.view(-1, 1).to(torch.int64)).squeeze(1)


class PromptLogprobs(NamedTuple):
    token_logprobs: torch.Tensor  # [N] logprob of each next prompt token
    top_logprobs: TopLogprobs  # N entries; empty lists when top_k == 0


def compute_prompt_logprobs(logits: torch.Tensor, next_ids: torch.Tensor, top_k: int) -> PromptLogprobs:
    """Logprobs of prompt tokens: row j of logits [N, V] predicts next_ids[j].

    The scheduler passes only the positions >= logprob_start_len, so N is what the client asked for.
    """
    if logits.shape[0] != next_ids.shape[0]:
        raise ValueError(
            f"compute_prompt_logprobs got {logits.shape[0]} logit rows for {next_ids.shape[0]} ids"
        )
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return PromptLogprobs(
        token_logprobs(logprobs, next_ids),
        top_logprobs(logprobs, [max(top_k, 0)] * logits.shape[0]),
    )
