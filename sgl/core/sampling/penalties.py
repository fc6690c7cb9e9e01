"""Frequency, presence and repetition penalties as dense per-batch tensors.

Two semantics meet here on purpose, because clients expect each one's own: frequency and presence follow OpenAI
(`logit -= freq * count + presence * (count > 0)`, counted over OUTPUT tokens only); repetition follows Hugging Face
(over prompt + output tokens, positive logits are divided by the penalty and negative ones multiplied).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sgl.core.sampling.params import SamplingParams
from sgl.core.transfer import rows_to_device, to_device


@dataclass(frozen=True)
class PenaltyState:
    """Penalty tensors for one step; a part is None when no request in the batch uses it."""

    output_counts: torch.Tensor | None  # [B, V] float32: occurrences of each token in the output so far
    frequency: torch.Tensor | None  # [B, 1] float32
    presence: torch.Tensor | None  # [B, 1] float32
    seen: torch.Tensor | None  # [B, V] bool: token occurs in prompt or output
    repetition: torch.Tensor | None  # [B, 1] float32


def token_matrix(
    row_seqs: Sequence[tuple[int, Sequence[int]]],
    batch_size: int,
    vocab_size: int,
    device: torch.device | str,
    pinned: bool = False,
) -> torch.Tensor:
    """[B, V] float32 counts of the tokens of each (row, seq) pair; a row may appear more than once.

    Token ids outside [0, vocab_size) are dropped: a tokenizer may know more ids than the model's lm head.
    """
    # NOTE: filtered on the host and sent in one transfer: a boolean mask over device tensors, or a pageable copy,
    # would wait for the device (the step's forward) before sampling could even be queued
    counts = torch.zeros(batch_size, vocab_size, dtype=torch.float32, device=device)
    pairs = [(r, t) for r, seq in row_seqs for t in seq if 0 <= t < vocab_size]
    if not pairs:
        return counts
    packed = rows_to_device([[r for r, _ in pairs], [t for _, t in pairs]], torch.int64, torch.device(device), pinned)
    counts.index_put_((packed[0], packed[1]), torch.ones(len(pairs), dtype=torch.float32, device=device),
                      accumulate=True)
    return counts


def build_penalties(
    params: Sequence[SamplingParams],
    output_ids: Sequence[Sequence[int]],
    prompt_ids: Sequence[Sequence[int]],
    vocab_size: int,
    device: torch.device | str,
    pinned: bool = False,
) -> PenaltyState | None:
    """None when no request uses a penalty, so the common step pays nothing for them."""
    freq = [p.frequency_penalty for p in params]
    pres = [p.presence_penalty for p in params]
    rep = [p.repetition_penalty for p in params]
    additive_rows = [i for i, (f, q) in enumerate(zip(freq, pres)) if f != 0.0 or q != 0.0]
    rep_rows = [i for i, r in enumerate(rep) if r != 1.0]
    if not additive_rows and not rep_rows:
        return None
    batch_size = len(params)

    def column(values: list[float]) -> torch.Tensor:
        return to_device(torch.tensor(values, dtype=torch.float32), torch.device(device), pinned).view(-1, 1)

    counts = frequency = presence = seen = repetition = None
    if additive_rows:
        counts = token_matrix([(i, output_ids[i]) for i in additive_rows], batch_size, vocab_size, device, pinned)
        frequency, presence = column(freq), column(pres)
    if rep_rows:
        pairs = [(i, prompt_ids[i]) for i in rep_rows] + [(i, output_ids[i]) for i in rep_rows]
        seen = token_matrix(pairs, batch_size, vocab_size, device, pinned) > 0
        repetition = column(rep)
    return PenaltyState(counts, frequency, presence, seen, repetition)


LOGIT_LIMIT = 1e30
"""Penalised logits stay within this: finite even after the smallest temperature (1e-6) divides them."""


def apply_penalties(logits: torch.Tensor, state: PenaltyState) -> None:
    """Penalises logits [B, V] in place: repetition first (it scales), then the additive OpenAI penalties."""
    if state.seen is not None and state.repetition is not None:
        scaled = torch.where(logits > 0, logits / state.repetition, logits * state.repetition)
        # NOTE: a valid but tiny penalty (1e-300) divides to inf, and a row of infs samples NaN, so a masked token
        scaled.clamp_(-LOGIT_LIMIT, LOGIT_LIMIT)
        torch.where(state.seen, scaled, logits, out=logits)
    if state.output_counts is not None and state.frequency is not None and state.presence is not None:
        counts = state.output_counts
        logits -= state.frequency * counts + state.presence * (counts > 0).to(logits.dtype)
