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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode
from sgl.core.runner.input_prep import build_forward_batch
from sgl.core.sampling.batch_info import SamplingBatchInfo
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.speculative.drafts import DeviceDrafts, draft_rows
from sgl.core.transfer import host_rows, to_device

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

    def row_contexts(self, i: int) -> list[list[int]]:
        """Per verified row of request i, the drafted tokens generated up to and including that row's input."""
        d = self.drafts[i]
        return [d[:j] for j in range(1 + len(d))]


class VerifyResult(NamedTuple):
    """Per request of the decode batch, in order: what the target emits this step and where its KV went."""

    tokens: list[list[int]]  # the target's tokens: the accepted drafts, then one of its own (1..k+1 tokens)
    logprobs: list[list[LogprobEntry | None]]  # parallel to tokens (None where the request asked for none)
    slots: list[list[int]]  # the KV slots of the verified positions (1 + k): slot j holds position kv_len + j
    drafted: list[int]  # k per request


AcceptRule = Callable[["Req", Sequence[int], Sequence[int]], int]
"""(request, its drafts d1..dk, the target's tokens at the k + 1 verified positions) -> how many drafts are accepted
(0..k); the step then emits those drafts and the target's token after them."""


def accept_matching(req: Req, drafts: Sequence[int], target: Sequence[int]) -> int:
    """The exact rule (``run_verify``'s NOTE): drafts are accepted while each equals the target's
    token before it."""
    n = 0
    while n < len(drafts) and drafts[n] == target[n]:
        n += 1
    return n


def draft_budget(r: Req, limit: int, context_len: int) -> int:
    """How many draft tokens ``r`` may verify this step: the step emits at most k + 1 tokens, all within its
    max_new_tokens and the context."""
    return max(0, min(limit, r.remaining_new_tokens - 1, context_len - r.seq_len - 1))


def may_draft(r: Req, executor: StepExecutor) -> bool:
    """Drafts are verified only for requests whose sampling does not depend on a feature's per-token state
    (a grammar's mask advances token by token); the others decode one token per step, exactly as without drafts."""
    return not any(f.needs_host_tokens(r) for f in executor.features)


def alloc_verify_slots(batch: ScheduleBatch, state: SchedulerState, counts: Sequence[int]) -> list[list[int]] | None:
    """Per request of the DECODE ``batch``: the KV slots of its last token (the decode slot) and of ``counts[i]``
    draft tokens after it, written into req_to_token's host mirror; None (nothing allocated) when they do not fit.

    NOTE: the verify batch writes them into the device table (``build_forward_batch``), so a step sends them once.
    A draft model that writes its own KV at these slots before the verify forward (EAGLE's draft KV shares the
    target's slot numbers) writes the device table's entries it attends to itself; the scheduler frees the
    rejected ones after verification as usual."""
    prefix = batch.prefix_lens
    starts = [p + 1 for p in prefix]
    ends = [s + n for s, n in zip(starts, counts)]
    state.make_room(sum(counts) + len(counts) * state.page_size)
    decode_slots: list[int] = batch.out_cache_loc.tolist()
    extra = state.allocator.alloc_extend(starts, ends, decode_slots)
    if extra is None:
        return None
    extra_host: list[int] = extra.tolist()
    rows: list[list[int]] = []
    table_rows: list[int] = []
    table_cols: list[int] = []
    flat: list[int] = []
    cursor = 0
    for r, p, d, n in zip(batch.reqs, prefix, decode_slots, counts):
        row = [d, *extra_host[cursor : cursor + n]]
        cursor += n
        rows.append(row)
        table_rows += [r.req_pool_idx] * (n + 1)  # type: ignore[list-item]  # scheduled: always set
        table_cols += range(p, p + n + 1)
        flat += row
    packed = host_rows([table_rows, table_cols, flat], torch.int64)
    state.req_pool.write_host(packed[0], packed[1], packed[2])
    return rows


def verify_drafts(
    batch: ScheduleBatch, state: SchedulerState, executor: StepExecutor,
    drafts: Sequence[Sequence[int]] | DeviceDrafts, accept: AcceptRule = accept_matching,
) -> VerifyResult | None:
    """Verifies ``drafts`` (one list per request of the DECODE ``batch``, or ``DeviceDrafts`` left on the device);
    None when no request has a draft or the pool cannot hold them: the caller then runs the plain decode step.
    ``accept``: see ``run_verify``."""
    chains: list[list[int]] | DeviceDrafts = drafts if isinstance(drafts, DeviceDrafts) else [list(d) for d in drafts]
    counts = chains.counts if isinstance(chains, DeviceDrafts) else [len(d) for d in chains]
    if not any(counts):
        return None
    rows = alloc_verify_slots(batch, state, counts)
    if rows is None:
        return None
    return run_verify(batch, executor, chains, rows, accept=accept).result


class Verified(NamedTuple):
    """A verify forward's outcome, and what it computed: ``hidden`` row j is the verified token j (request-major:
    each request's last token, then its drafts); ``forward_batch.captured_hidden`` holds the layers asked for."""

    result: VerifyResult
    forward_batch: ForwardBatch
    hidden: torch.Tensor


def run_verify(
    batch: ScheduleBatch, executor: StepExecutor, drafts: list[list[int]] | DeviceDrafts, rows: list[list[int]],
    capture_hidden_layers: tuple[int, ...] = (), accept: AcceptRule = accept_matching,
) -> Verified:
    """One TARGET_VERIFY forward over each request's last token and its drafts, at the slots ``rows`` (from
    ``alloc_verify_slots``), and the accepted prefix of each chain: ``accept`` decides its length (by default the
    exact rule; an algorithm's ``SpeculativeAlgorithm.accept``), and the step emits the accepted drafts, then the
    target's token after them. ``drafts`` may stay on the device (``DeviceDrafts``): they are read on the host with
    the target's tokens, in one transfer.

    NOTE: with the exact rule the emitted tokens are the target's own at every position. A rule that accepts a draft
    the target did not pick emits that draft, and its logprob entry stays the target's token's."""
    on_device: DeviceDrafts | None = None
    if isinstance(drafts, DeviceDrafts):  # NOTE: placeholders of the right lengths until the drafts come home
        on_device, chains = drafts, [[0] * k for k in drafts.counts]
    else:
        chains = drafts
    vb = VerifyBatch(list(batch.reqs), list(batch.prefix_lens), chains, flat_slots(rows))
    fb, hidden, ids, lps = verify_forward(vb, executor, capture_hidden_layers, device_drafts=on_device)
    tokens: list[list[int]] = []
    logprobs: list[list[LogprobEntry | None]] = []
    offset = 0
    for r, d in zip(vb.reqs, vb.drafts):
        target = ids[offset : offset + 1 + len(d)]
        n = accept(r, d, target)
        if not 0 <= n <= len(d):
            raise ValueError(f"an acceptance rule accepted {n} of {len(d)} drafts")
        tokens.append(list(d[:n]) + [target[n]])
        logprobs.append(lps[offset : offset + n + 1])
        offset += 1 + len(d)
    return Verified(VerifyResult(tokens, logprobs, rows, [len(d) for d in vb.drafts]), fb, hidden)


def flat_slots(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor([s for row in rows for s in row], dtype=torch.int64)


def verify_forward(
    vb: VerifyBatch, executor: StepExecutor, capture_hidden_layers: tuple[int, ...] = (),
    tree_masks: list[torch.Tensor] | None = None, device_drafts: DeviceDrafts | None = None,
) -> tuple[ForwardBatch, torch.Tensor, list[int], list[LogprobEntry | None]]:
    """The TARGET_VERIFY forward over ``vb`` (a chain per request, or with ``tree_masks`` a tree) and the target's
    token and logprobs at every verified position: (forward batch, hidden states, tokens, logprobs). With
    ``device_drafts`` ``vb.drafts`` are placeholders of the right lengths: the forward reads the drafts on the device,
    and ``vb.drafts`` holds them once they came home with the target's tokens."""
    runner = executor.runner
    with torch.inference_mode():
        fb = build_forward_batch(vb, runner)
        if device_drafts is not None and device_drafts.tokens.numel():
            place_drafts(fb.input_ids, device_drafts, executor.pinned)
        fb.capture_hidden_layers = capture_hidden_layers
        fb.tree_masks = tree_masks
        hidden = runner.forward(fb)
        ids, lps = _sample_positions(vb, runner.compute_logits(hidden), executor, device_drafts)
    return fb, hidden, ids, lps


def place_drafts(input_ids: torch.Tensor, drafts: DeviceDrafts, pinned: bool) -> None:
    """Writes ``drafts`` into a chain verify batch's ``input_ids`` (request i: its last token, then its drafts).

    NOTE: where every request has the same number of drafts (batch 1 always) they are one strided copy; otherwise
    their rows travel to the device first."""
    k = drafts.counts[0]
    if k and all(c == k for c in drafts.counts):
        input_ids.view(len(drafts.counts), k + 1)[:, 1:].copy_(drafts.tokens.view(-1, k))
        return
    where = to_device(torch.tensor(draft_rows(drafts.counts), dtype=torch.int64), input_ids.device, pinned)
    input_ids.index_copy_(0, where, drafts.tokens.to(input_ids.dtype))


def _needs_draft_values(reqs: Sequence[Req]) -> bool:
    """Whether sampling a verified position reads the values of the drafts before it (penalties count tokens); the
    rest (seeds, min_new_tokens) depends on how many there are only."""
    return any(
        r.sampling_params.frequency_penalty != 0.0 or r.sampling_params.presence_penalty != 0.0
        or r.sampling_params.repetition_penalty != 1.0
        for r in reqs
    )


def _sample_positions(
    vb: VerifyBatch, logits: torch.Tensor, executor: StepExecutor, device_drafts: DeviceDrafts | None = None
) -> tuple[list[int], list[LogprobEntry | None]]:
    """The target's token (and logprobs) at every verified position, as plain decoding would sample it there.

    NOTE: device drafts come home before sampling only where a penalty needs their values (one more transfer);
    otherwise with the sampled tokens, in one."""
    if device_drafts is not None and _needs_draft_values(vb.reqs):
        vb.drafts = device_drafts.split(device_drafts.tokens.tolist())
        device_drafts = None
    reqs: list[Req] = []
    outputs: list[list[int]] = []
    for i, r in enumerate(vb.reqs):
        for context in vb.row_contexts(i):
            reqs.append(r)
            outputs.append(r.output_ids + context)
    pinned = executor.pinned
    info = SamplingBatchInfo.build(
        [r.sampling_params for r in reqs], executor.runner.vocab_size, logits.device, output_ids=outputs,
        prompt_ids=[r.origin_input_ids for r in reqs], eos_ids=[r.eos_ids for r in reqs], pinned=pinned,
    )
    mask = _feature_mask(vb.reqs, executor, logits.device)
    if mask is not None:
        # NOTE: a masked request has no drafts (may_draft), so its one row is its first row
        rows = torch.tensor([i for i, r in enumerate(vb.reqs) for _ in range(1 + len(vb.drafts[i]))])
        info = dataclasses.replace(info, vocab_mask=mask.index_select(0, to_device(rows, mask.device, pinned)))
    want_lp = any(r.return_logprob for r in reqs)
    out = executor.sampler(
        logits, info, return_logprob=want_lp, top_logprobs_nums=[r.top_logprobs_num for r in reqs] if want_lp else None
    )
    if device_drafts is None:
        ids = out.next_token_ids.tolist()
    else:  # NOTE: the step's one read of the device: the target's tokens and the drafts together
        home = torch.cat([out.next_token_ids.to(torch.int64), device_drafts.tokens]).tolist()
        ids = home[: len(reqs)]
        vb.drafts = device_drafts.split(home[len(reqs) :])
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
