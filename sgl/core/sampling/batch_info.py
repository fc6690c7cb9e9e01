"""SamplingBatchInfo: one step's sampling state for the whole batch, as tensors the Sampler consumes.

The scheduler rebuilds it every step, so `build()` stays cheap in the common case: it reads each request's params once
and makes a handful of small tensors. Penalty, logit-bias and min-tokens tensors are built only when some request in
the batch uses them, and the per-row Python work they need is confined to those rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from sgl.core.sampling.params import SamplingParams
from sgl.core.sampling.penalties import PenaltyState, build_penalties
from sgl.core.transfer import rows_to_device, to_device

_MASK64 = (1 << 64) - 1


def step_seed(seed: int, step: int) -> int:
    """The generator seed of a seeded request at decode step `step` (= tokens generated so far).

    A splitmix64 mix, so neighbouring (seed, step) pairs give unrelated streams. NOTE: it depends on nothing but
    (seed, step): that is what makes a seeded request's tokens independent of its batch and its row.
    """
    z = (seed * 0x9E3779B97F4A7C15 + step + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z & ((1 << 63) - 1)


class TokenMask(NamedTuple):
    """A sparse set of forbidden (row, token) pairs."""

    rows: torch.Tensor  # [M] int64
    cols: torch.Tensor  # [M] int64


@dataclass(frozen=True)
class SamplingBatchInfo:
    """Vectorised sampling state of one step. Greedy rows carry temperature 1 so mixed batches never divide by 0."""

    temperatures: torch.Tensor  # [B, 1] float32
    top_ps: torch.Tensor  # [B] float32
    top_ks: torch.Tensor  # [B] int64; vocab_size where top-k is disabled
    min_ps: torch.Tensor  # [B] float32
    is_greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    need_top_p: bool
    need_top_k: bool
    need_min_p: bool
    vocab_size: int
    penalties: PenaltyState | None = None
    logit_bias: torch.Tensor | None = None  # [B, V] float32, additive
    min_tokens_mask: TokenMask | None = None  # EOS / stop tokens forbidden until min_new_tokens are out
    # [B, V] bool, True = forbidden; grammar plugins set it with dataclasses.replace().
    vocab_mask: torch.Tensor | None = None
    # NOTE: row_seeds[i] is None for rows drawn from the global RNG (unseeded or greedy rows).
    row_seeds: tuple[int | None, ...] = ()

    @property
    def batch_size(self) -> int:
        return int(self.temperatures.shape[0])

    @property
    def seeded_rows(self) -> list[int]:
        return [i for i, s in enumerate(self.row_seeds) if s is not None]

    @property
    def needs_logit_processing(self) -> bool:
        return (
            self.penalties is not None
            or self.logit_bias is not None
            or self.min_tokens_mask is not None
            or self.vocab_mask is not None
        )

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        vocab_size: int,
        device: torch.device | str,
        output_ids: Sequence[Sequence[int]],
        prompt_ids: Sequence[Sequence[int]],
        eos_ids: Sequence[set[int]] | None = None,
        step_seeds: Sequence[int | None] | None = None,
        pinned: bool = False,
    ) -> SamplingBatchInfo:
        """`step_seeds`, when given, overrides the generator seed of each row (None = global RNG); otherwise it is
        `step_seed(params.seed, len(output_ids))` for seeded sampling rows."""
        batch_size = len(params)
        if len(output_ids) != batch_size or len(prompt_ids) != batch_size:
            raise ValueError(
                f"build() got {batch_size} params but {len(output_ids)} output_ids and {len(prompt_ids)} prompt_ids"
            )
        if step_seeds is not None and len(step_seeds) != batch_size:
            raise ValueError(f"build() got {batch_size} params but {len(step_seeds)} step_seeds")
        # NOTE: one pass over the rows (a decode step at batch 1000 pays ~1 µs per pass per 1000 rows per list);
        # the penalty, logit-bias and min-tokens builders run only when some row needs them (each returns None
        # otherwise, so the gates below change no result: tests/core/test_sampling_batch_info.py checks it).
        temps: list[float] = []
        top_ps: list[float] = []
        min_ps: list[float] = []
        top_ks: list[float] = []  # ints, packed with the float rows
        greedy: list[float] = []
        seeds: list[int | None] = []
        need_top_p = need_top_k = need_min_p = penalties = bias = min_tokens = False
        for i, p in enumerate(params):
            g = p.is_greedy
            k = p.top_k if 0 < p.top_k < vocab_size else vocab_size
            temps.append(1.0 if g else p.temperature)
            top_ps.append(p.top_p)
            min_ps.append(p.min_p)
            top_ks.append(k)
            greedy.append(1.0 if g else 0.0)
            if g:
                seeds.append(None)
            else:
                need_top_p = need_top_p or p.top_p < 1.0
                need_top_k = need_top_k or k < vocab_size
                need_min_p = need_min_p or p.min_p > 0.0
                if step_seeds is not None:
                    seeds.append(step_seeds[i])
                else:
                    seeds.append(step_seed(p.seed, len(output_ids[i])) if p.seed is not None else None)
            penalties = penalties or (p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
                                      or p.repetition_penalty != 1.0)
            bias = bias or bool(p.logit_bias)
            min_tokens = min_tokens or p.min_new_tokens > len(output_ids[i])

        # NOTE: the per-row scalars travel in one transfer (pinned where the platform has it), once per step.
        packed = rows_to_device([temps, top_ps, min_ps, top_ks, greedy], torch.float32, torch.device(device), pinned)
        return cls(
            temperatures=packed[0].view(-1, 1),
            top_ps=packed[1],
            top_ks=packed[3].to(torch.int64),
            min_ps=packed[2],
            is_greedy=packed[4] > 0.5,
            all_greedy=all(greedy),
            need_top_p=need_top_p,
            need_top_k=need_top_k,
            need_min_p=need_min_p,
            vocab_size=vocab_size,
            penalties=build_penalties(params, output_ids, prompt_ids, vocab_size, device, pinned) if penalties else None,
            logit_bias=_build_logit_bias(params, vocab_size, device, pinned) if bias else None,
            min_tokens_mask=(_build_min_tokens_mask(params, output_ids, eos_ids, vocab_size, device, pinned)
                             if min_tokens else None),
            row_seeds=tuple(seeds),
        )


def _build_logit_bias(
    params: Sequence[SamplingParams], vocab_size: int, device: torch.device | str, pinned: bool = False
) -> torch.Tensor | None:
    rows = [i for i, p in enumerate(params) if p.logit_bias]
    if not rows:
        return None
    r_idx: list[int] = []
    c_idx: list[int] = []
    values: list[float] = []
    for i in rows:
        bias = params[i].logit_bias
        assert bias is not None
        for token, value in bias.items():
            r_idx.append(i)
            c_idx.append(int(token))
            values.append(float(value))
    dense = torch.zeros(len(params), vocab_size, dtype=torch.float32, device=device)
    # NOTE: pinned, asynchronous copies (a pageable one would wait for the device's queued forward)
    where = rows_to_device([r_idx, c_idx], torch.int64, torch.device(device), pinned)
    dense[where[0], where[1]] = to_device(torch.tensor(values, dtype=torch.float32), torch.device(device), pinned)
    return dense


def _build_min_tokens_mask(
    params: Sequence[SamplingParams],
    output_ids: Sequence[Sequence[int]],
    eos_ids: Sequence[set[int]] | None,
    vocab_size: int,
    device: torch.device | str,
    pinned: bool = False,
) -> TokenMask | None:
    """EOS and stop_token_ids are forbidden while a request has fewer than min_new_tokens outputs.

    NOTE: with ignore_eos, EOS does not end generation, so only stop_token_ids are forbidden (they still stop it).
    """
    rows = [i for i, (p, out) in enumerate(zip(params, output_ids)) if p.min_new_tokens > len(out)]
    if not rows:
        return None
    r_idx: list[int] = []
    c_idx: list[int] = []
    for i in rows:
        p = params[i]
        blocked = set(eos_ids[i]) if eos_ids is not None and not p.ignore_eos else set()
        blocked.update(p.stop_token_ids or ())
        for token in blocked:
            if 0 <= token < vocab_size:
                r_idx.append(i)
                c_idx.append(token)
    if not r_idx:
        return None
    where = rows_to_device([r_idx, c_idx], torch.int64, torch.device(device), pinned)
    return TokenMask(where[0], where[1])
