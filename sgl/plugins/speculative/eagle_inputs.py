"""An EAGLE head's batches for one decode step, built on the host and sent to the device in one transfer.

A chain step runs the head several times: a catch-up extend over each drafting request's waiting rows (the target's
feature at p with the token at p + 1, for the positions verified since the head last ran), then one decode step per
further draft at the verify slots. On a GPU at batch 1 each transfer costs a pinned staging buffer and a copy launch
while the device waits, so every list the step needs (ids, positions, slots, lengths, the rows a shorter chain drops)
travels together (``lists_to_device``), and the batches are views of that one buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode
from sgl.core.transfer import lists_to_device

if TYPE_CHECKING:
    from sgl.core.runner.model_runner import ModelRunner


class CatchUpRows(NamedTuple):
    """A catch-up extend on the host: per request, its request slot, first position and row count; per row (request
    by request), the token after the row's position and the row's KV slot."""

    pool: list[int]
    starts: list[int]
    counts: list[int]
    ids: list[int]
    slots: list[int]


class ChainStep(NamedTuple):
    """A chained draft step's batch (its ``input_ids`` and features are set when the step before it ran)."""

    batch: ForwardBatch
    select: torch.Tensor | None  # rows of the step before it that go on (a request's chain ended), or None: all


class DraftInputs(NamedTuple):
    """What ``draft_inputs`` sent to the device for one step's drafting."""

    catch_up: ForwardBatch | None  # EXTEND over the waiting rows (its features are set by the caller); None: none
    last: torch.Tensor | None  # each request's last catch-up row, or None: one row per request
    chain: list[ChainStep]
    members: list[list[int]]  # per draft step, which drafting requests it drafts for (ascending)


def _catch_up_lists(rows: CatchUpRows) -> list[list[int]]:
    ends = [s + n for s, n in zip(rows.starts, rows.counts)]
    offsets = [0]
    for n in rows.counts[:-1]:
        offsets.append(offsets[-1] + n)
    positions = [p for s, e in zip(rows.starts, ends) for p in range(s, e)]
    lists = [rows.pool, ends, rows.starts, rows.counts, offsets, positions, rows.ids, rows.slots]
    if any(n != 1 for n in rows.counts):
        lists.append([o + n - 1 for o, n in zip(offsets, rows.counts)])
    return lists


def _catch_up_batch(draft: ModelRunner, rows: CatchUpRows, t: Sequence[torch.Tensor]) -> ForwardBatch:
    """The EXTEND batch over ``t``, the device tensors of ``_catch_up_lists(rows)`` (in its order)."""
    return ForwardBatch(
        forward_mode=ForwardMode.EXTEND, batch_size=len(rows.pool), input_ids=t[6], positions=t[5],
        req_pool_indices=t[0], seq_lens=t[1], out_cache_loc=t[7],
        seq_lens_cpu=[s + n for s, n in zip(rows.starts, rows.counts)],
        req_to_token_pool=draft.req_to_token_pool, kv_pool=draft.kv_pool, attn_backend=draft.attn_backend,
        extend_prefix_lens=t[2], extend_seq_lens=t[3], extend_start_loc=t[4], extend_prefix_lens_cpu=rows.starts,
        extend_seq_lens_cpu=rows.counts,
    )


def draft_inputs(
    draft: ModelRunner, catch_up: CatchUpRows | None, prefix_lens: Sequence[int], budgets: Sequence[int],
    rows: Sequence[Sequence[int]], idx: Sequence[int], pool: Sequence[int], write_table: bool,
) -> DraftInputs:
    """The head's batches for one step, from one transfer: the ``catch_up`` extend (None: it ran already), then the
    chained decode steps of the drafting requests (``idx``: their rows in the decode batch, ``pool`` their request
    slots) at the verify slots ``rows``, request i's draft j at position ``prefix_lens[i] + j - 1``.

    NOTE: ``alloc_verify_slots`` wrote the verify slots into the request table's host mirror only (the verify
    batch writes the device table); with ``write_table`` the chained steps' slots go into the (shared) device table
    here, in one write, since a draft step at position last + j - 1 attends to the positions up to its own."""
    lists = _catch_up_lists(catch_up) if catch_up is not None else []
    catch_up_lists = len(lists)
    members = [list(range(len(idx)))]
    chain: list[tuple[int, list[int], bool]] = []  # (the step's first list, its seq lens, whether it selects)
    for j in range(1, max(budgets)):
        live = members[-1]
        keep = [m for m in live if budgets[idx[m]] > j]
        if not keep:
            break
        pos = [prefix_lens[idx[m]] + j - 1 for m in keep]
        chain.append((len(lists), [q + 1 for q in pos], len(keep) != len(live)))
        lists += [[pool[m] for m in keep], pos, [q + 1 for q in pos], [rows[idx[m]][j - 1] for m in keep]]
        if len(keep) != len(live):
            lists.append([live.index(m) for m in keep])
        members.append(keep)
    write = len(lists)  # the chained steps' (request, column, slot) lists, all steps together
    write_table = write_table and bool(chain)
    if write_table:
        lists += [[v for k, _, _ in chain for v in lists[k + i]] for i in (0, 1, 3)]
    t = lists_to_device(lists, torch.int64, draft.device, bool(draft.platform.capabilities.pinned_memory))
    if write_table:
        table = draft.req_to_token_pool.req_to_token
        table[t[write], t[write + 1]] = t[write + 2].to(table.dtype)
    steps = [
        ChainStep(ForwardBatch(
            # NOTE: input_ids is a placeholder until the step before it picked its tokens
            forward_mode=ForwardMode.DECODE, batch_size=len(seq_lens), input_ids=t[k + 1], positions=t[k + 1],
            req_pool_indices=t[k], seq_lens=t[k + 2], out_cache_loc=t[k + 3], seq_lens_cpu=seq_lens,
            req_to_token_pool=draft.req_to_token_pool, kv_pool=draft.kv_pool, attn_backend=draft.attn_backend,
        ), t[k + 4] if select else None)
        for k, seq_lens, select in chain
    ]
    if catch_up is None:
        return DraftInputs(None, None, steps, members)
    last = t[8] if catch_up_lists > 8 else None
    return DraftInputs(_catch_up_batch(draft, catch_up, t), last, steps, members)
