"""Verification, shared by every algorithm: one TARGET_VERIFY forward over each request's last token and its drafts,
the target's token at every position, and the accepted prefix.

The decode batch has already given each request one KV slot (for its last token); ``verify_drafts`` adds one slot per
draft token, runs the target over ``[last, d1 .. dk]`` as an extend over the request's KV, and samples the target at
every position with the same sampler, parameters and per-step seeds as plain decoding, each position seeing the
drafts before it as already generated. Draft ``d(j+1)`` is accepted while it equals the target's token at position j.

NOTE: this is exact. Greedy: the accepted run is the target's argmax chain, token for token. Sampling: drafts are
deterministic (a point-mass proposal q = 1[d]), for which the standard rejection rule (accept d with probability
min(1, p(d) / q(d)) = p(d), else draw from norm(max(0, p - q)) = p without d) is the same as drawing x ~ p and
accepting d iff x == d, then emitting x: every emitted token is a draw from the target given the tokens before it.
Seeded requests give the very tokens of plain decoding (the seed of position j is the seed of that output index).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

from sgl.core.runner.forward_batch import ForwardMode
from sgl.core.runner.input_prep import build_forward_batch
from sgl.core.sampling.batch_info import SamplingBatchInfo
from sgl.core.scheduler.batch import ScheduleBatch

if TYPE_CHECKING:
    from sgl.core.scheduler.req import Req
    from sgl.core.scheduler.state import SchedulerState
    from sgl.core.scheduler.step import LogprobEntry, StepExecutor


class VerifyBatch(ScheduleBatch):
    """A TARGET_VERIFY batch: request i computes its last token and ``drafts[i]`` at positions ``prefix_lens[i]..``."""

    def __init__(self, reqs: list[Req], prefix_lens: list[int], drafts: list[list[int]], slots: torch.Tensor) -> None:
        super().__init__(ForwardMode.TARGET_VERIFY, reqs, prefix_lens, [1 + len(d) for d in drafts], slots)
        self.drafts = drafts

    def input_ids(self) -> list[int]:
        ids: list[int] = []
        for r, d in zip(self.reqs, self.drafts):
            ids.append(r.output_ids[-1] if r.output_ids else r.origin_input_ids[-1])
            ids.extend(d)
        return ids


class VerifyResult(NamedTuple):
    """Per request of the decode batch, in order: what the target emits this step and where its KV went."""

    tokens: list[list[int]]  # the target's tokens: the accepted drafts, then one of its own (1..k+1 tokens)
    logprobs: list[list[LogprobEntry | None]]  # parallel to tokens (None where the request asked for none)
    slots: list[list[int]]  # the KV slots of the verified positions (1 + k): slot j holds position kv_len + j
    drafted: list[int]  # k per request


def draft_budget(r: Req, limit: int, context_len: int) -> int:
    """How many draft tokens ``r`` may verify this step: the step emits at most k + 1 tokens, all within its
    max_new_tokens and the context."""
    return max(0, min(limit, r.remaining_new_tokens - 1, context_len - r.seq_len - 1))


def may_draft(r: Req, executor: StepExecutor) -> bool:
    """Drafts are verified only for requests whose sampling does not depend on a feature's per-token state
    (a grammar's mask advances token by token); the others decode one token per step, exactly as without drafts."""
    return not any(f.needs_host_tokens(r) for f in executor.features)


def _alloc_draft_slots(batch: ScheduleBatch, state: SchedulerState, drafts: list[list[int]]) -> torch.Tensor | None:
    """Slots for every draft token, after each request's decode slot; None (nothing allocated) when they do not fit."""
    starts = [p + 1 for p in batch.prefix_lens]
    ends = [s + len(d) for s, d in zip(starts, drafts)]
    total = sum(len(d) for d in drafts)
    state.make_room(total + len(drafts) * state.page_size)
    last = [int(x) for x in batch.out_cache_loc.tolist()]
    return state.allocator.alloc_extend(starts, ends, last)


def verify_drafts(
    batch: ScheduleBatch, state: SchedulerState, executor: StepExecutor, drafts: Sequence[Sequence[int]]
) -> VerifyResult | None:
    """Verifies ``drafts`` (one list per request of the DECODE ``batch``); None when no request has a draft or the
    pool cannot hold them: the caller then runs the plain decode step."""
    drafts = [list(d) for d in drafts]
    if not any(drafts):
        return None
    extra = _alloc_draft_slots(batch, state, drafts)
    if extra is None:
        return None
    runner = executor.runner
    decode_slots = batch.out_cache_loc.to("cpu", torch.int64)
    extra_host = extra.to("cpu", torch.int64)
    per_req: list[list[int]] = []
    cursor = 0
    for i, (r, d) in enumerate(zip(batch.reqs, drafts)):
        row = [int(decode_slots[i])] + extra_host[cursor : cursor + len(d)].tolist()
        cursor += len(d)
        per_req.append(row)
        state.req_pool.write(int(r.req_pool_idx), batch.prefix_lens[i], torch.tensor(row, dtype=torch.int64))  # type: ignore[arg-type]
    flat = torch.tensor([s for row in per_req for s in row], dtype=torch.int64)
    vb = VerifyBatch(list(batch.reqs), list(batch.prefix_lens), drafts, flat)
    with torch.inference_mode():
        fb = build_forward_batch(vb, runner)
        hidden = runner.forward(fb)
        logits = runner.compute_logits(hidden)
        ids, lps = _sample_positions(vb, logits, executor)
    tokens: list[list[int]] = []
    logprobs: list[list[LogprobEntry | None]] = []
    offset = 0
    for r, d in zip(vb.reqs, drafts):
        n = 1
        while n <= len(d) and d[n - 1] == ids[offset + n - 1]:
            n += 1
        tokens.append(ids[offset : offset + n])
        logprobs.append(lps[offset : offset + n])
        offset += 1 + len(d)
    return VerifyResult(tokens, logprobs, per_req, [len(d) for d in drafts])


def _sample_positions(
    vb: VerifyBatch, logits: torch.Tensor, executor: StepExecutor
) -> tuple[list[int], list[LogprobEntry | None]]:
    """The target's token (and logprobs) at every verified position, as plain decoding would sample it there."""
    reqs: list[Req] = []
    outputs: list[list[int]] = []
    for r, d in zip(vb.reqs, vb.drafts):
        for j in range(1 + len(d)):
            reqs.append(r)
            outputs.append(r.output_ids + d[:j])
    pinned = executor.pinned
    info = SamplingBatchInfo.build(
        [r.sampling_params for r in reqs], executor.runner.vocab_size, logits.device, output_ids=outputs,
        prompt_ids=[r.origin_input_ids for r in reqs], eos_ids=[r.eos_ids for r in reqs], pinned=pinned,
    )
    mask = _feature_mask(vb.reqs, executor, logits.device)
    if mask is not None:
        # NOTE: a masked request has no drafts (may_draft), so its one row is its first row
        rows = torch.tensor([i for i, r in enumerate(vb.reqs) for _ in range(1 + len(vb.drafts[i]))])
        info = dataclasses.replace(info, vocab_mask=mask.index_select(0, rows.to(mask.device)))
    want_lp = any(r.return_logprob for r in reqs)
    out = executor.sampler(
        logits, info, return_logprob=want_lp, top_logprobs_nums=[r.top_logprobs_num for r in reqs] if want_lp else None
    )
    ids = out.next_token_ids.tolist()
    lps: list[LogprobEntry | None] = [None] * len(ids)
    if want_lp and out.next_token_logprobs is not None:
        chosen = out.next_token_logprobs.tolist()
        for j, r in enumerate(reqs):
            if r.return_logprob:
                top = out.top_logprobs[j] if out.top_logprobs is not None else ([], [])
                pairs = [(float(v), int(t)) for v, t in zip(top[0], top[1])]
                lps[j] = ((float(chosen[j]), int(ids[j])), pairs)
    return ids, lps


def _feature_mask(reqs: list[Req], executor: StepExecutor, device: torch.device) -> torch.Tensor | None:
    mask: torch.Tensor | None = None
    for f in executor.features:
        m = f.logit_mask(reqs, executor.runner.vocab_size, device, executor.pinned)
        if m is not None:
            mask = m if mask is None else mask | m
    return mask
