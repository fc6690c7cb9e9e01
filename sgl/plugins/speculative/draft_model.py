"""A draft model beside the target: its own runner, KV pool and slot allocator, kept in step with each request.

The draft's request-to-token table has the target's shape, and a request uses the row the target gave it, so draft
batches are ordinary ScheduleBatches over the target's requests. The draft's KV of a request covers ``tokens`` (a
prefix of what it has seen: the request's sequence, then its own earlier drafts); before drafting, it is cut back to
the prefix the request still agrees with, and the rest is computed in one extend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sgl.core.distributed.communicator import ParallelState
from sgl.core.memory.allocator import TokenAllocator
from sgl.core.runner.forward_batch import ForwardMode
from sgl.core.runner.input_prep import build_forward_batch
from sgl.core.runner.model_runner import ModelRunner
from sgl.core.scheduler.batch import ScheduleBatch

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.scheduler.req import Req


@dataclass
class DraftKV:
    """One request's KV in the draft model: ``slots[i]`` holds the KV of ``tokens[i]``."""

    row: int
    tokens: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class DraftModel:
    """Greedy chains of draft tokens from a smaller model with the target's tokenizer."""

    def __init__(self, args: ServerArgs, target: ModelRunner, path: str, key: str) -> None:
        # NOTE: the draft's pools mirror the target's: the same request rows, as many KV slots
        draft_args = dataclasses.replace(
            args, model_path=path, max_total_tokens=target.max_total_tokens,
            max_running_requests=target.max_running_requests, context_length=target.context_len, page_size=1,
        )
        # NOTE: under tensor parallelism every rank runs the whole draft (greedy, so all ranks draft alike) on its
        # own device, with no collectives
        self.runner = ModelRunner(draft_args, target.platform, path, ParallelState(device_index=target.parallel.device))
        if self.runner.vocab_size != target.vocab_size:
            raise ValueError(f"--speculative-draft-model-path {path}: its vocabulary ({self.runner.vocab_size} tokens) "
                             f"is not the target's ({target.vocab_size}); the draft must share the target's tokenizer")
        self.allocator = TokenAllocator(self.runner.max_total_tokens, 1, "cpu")
        self.key = key  # where a request's DraftKV lives in req.features

    # per-request KV ---------------------------------------------------------------------------------------------
    def _kv(self, r: Req) -> DraftKV:
        kv: DraftKV | None = r.features.get(self.key)
        row = int(r.req_pool_idx)  # type: ignore[arg-type]  # a decoding request holds a row
        if kv is not None and kv.row != row:  # NOTE: retracted and readmitted: another row, its KV is stale
            self.release(r)
            kv = None
        if kv is None:
            kv = r.features[self.key] = DraftKV(row)
        return kv

    def _truncate(self, kv: DraftKV, keep: int) -> None:
        if keep < len(kv.slots):
            self.allocator.free(torch.tensor(kv.slots[keep:], dtype=torch.int64))
            del kv.slots[keep:], kv.tokens[keep:]

    def release(self, r: Req) -> None:
        kv: DraftKV | None = r.features.pop(self.key, None)
        if kv is not None:
            self._truncate(kv, 0)

    def _alloc(self, n: int) -> list[int] | None:
        got = self.allocator.alloc(n)
        return None if got is None else got.tolist()

    # drafting ---------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, reqs: list[Req], budgets: list[int]) -> list[list[int]]:
        """Up to ``budgets[i]`` greedy draft tokens after each request's sequence (fewer when the pool is full)."""
        drafts: list[list[int]] = [[] for _ in reqs]
        active = [i for i, k in enumerate(budgets) if k > 0]
        batch_reqs, prefix, slots = [], [], []
        for i in active:
            r = reqs[i]
            kv = self._kv(r)
            seq = r.all_ids()
            self._truncate(kv, min(_common_prefix(kv.tokens, seq), len(seq) - 1))
            new = self._alloc(len(seq) - len(kv.slots))
            if new is None:
                continue
            self.runner.req_to_token_pool.write(kv.row, len(kv.slots), torch.tensor(new, dtype=torch.int64))
            batch_reqs.append(i)
            prefix.append(len(kv.slots))
            slots.extend(new)
            kv.slots.extend(new)
            kv.tokens = list(seq)
        if not batch_reqs:
            return drafts
        reqs_b = [reqs[i] for i in batch_reqs]
        ext = [len(reqs[i].all_ids()) - p for i, p in zip(batch_reqs, prefix)]
        batch = ScheduleBatch(ForwardMode.EXTEND, reqs_b, prefix, ext, torch.tensor(slots, dtype=torch.int64))
        last = torch.tensor(ext, dtype=torch.int64).cumsum(0) - 1
        tokens = self._next_tokens(batch, last, None)
        for i, t in zip(batch_reqs, tokens):
            drafts[i].append(t)
        live = [i for i in batch_reqs if budgets[i] > 1]
        while live:
            live = self._decode_once(reqs, live, drafts)
            live = [i for i in live if len(drafts[i]) < budgets[i]]
        return drafts

    def _decode_once(self, reqs: list[Req], live: list[int], drafts: list[list[int]]) -> list[int]:
        """Feeds each live request's newest draft token; appends the next. Returns the requests that got one."""
        new = self._alloc(len(live))
        if new is None:
            return []
        starts = []
        for i, slot in zip(live, new):
            kv: DraftKV = reqs[i].features[self.key]
            starts.append(len(kv.slots))
            kv.slots.append(slot)
            kv.tokens.append(drafts[i][-1])
        batch = ScheduleBatch(ForwardMode.DECODE, [reqs[i] for i in live], starts, [1] * len(live),
                              torch.tensor(new, dtype=torch.int64))
        ids = torch.tensor([drafts[i][-1] for i in live], dtype=torch.int64).to(self.runner.device)
        for i, t in zip(live, self._next_tokens(batch, None, ids)):
            drafts[i].append(t)
        return live

    def _next_tokens(self, batch: ScheduleBatch, rows: torch.Tensor | None, ids: torch.Tensor | None) -> list[int]:
        fb = build_forward_batch(batch, self.runner, ids)
        hidden = self.runner.forward(fb)
        if rows is not None:
            hidden = hidden.index_select(0, rows.to(hidden.device))
        return [int(t) for t in self.runner.compute_logits(hidden).argmax(dim=-1).tolist()]
