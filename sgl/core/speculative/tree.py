"""Tree verification: each request drafts a tree of tokens (several continuations sharing prefixes); one
TARGET_VERIFY forward computes every node with a tree attention mask, and the target walks the tree.

NOTE: this is exact for the same reason chains are (verify.py): at each node the target's token is drawn as plain
decoding would draw it there (same sampler, parameters, and the seed of that output index); if a child carries that
token the walk moves into it, else the token is emitted and the step ends. Every emitted token is the target's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode
from sgl.core.runner.input_prep import build_forward_batch
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.speculative.verify import VerifyBatch, VerifyResult, flat_slots, verify_forward

if TYPE_CHECKING:
    from sgl.core.scheduler.req import Req
    from sgl.core.scheduler.state import SchedulerState
    from sgl.core.scheduler.step import LogprobEntry, StepExecutor


@dataclass
class DraftTree:
    """Nodes in an order where parents come first; parent -1 is the request's last token (the root)."""

    tokens: list[int]
    parents: list[int]

    def __len__(self) -> int:
        return len(self.tokens)

    def depth(self, i: int) -> int:
        d = 0
        while i >= 0:
            i, d = self.parents[i], d + 1
        return d

    def path(self, i: int) -> list[int]:
        """The nodes from the root's child down to ``i``."""
        out: list[int] = []
        while i >= 0:
            out.append(i)
            i = self.parents[i]
        return out[::-1]

    def mask(self, with_root: bool = True) -> torch.Tensor:
        """bool [rows, rows]: each row sees itself and its ancestors (row 0 is the root when ``with_root``)."""
        off = 1 if with_root else 0
        n = len(self) + off
        m = torch.zeros(n, n, dtype=torch.bool)
        if with_root:
            m[:, 0] = True
        for i in range(len(self)):
            for a in self.path(i):
                m[i + off, a + off] = True
        return m


class TreeBatch(ScheduleBatch):
    """New tokens at explicit positions (not consecutive), each attending to the prefix and to what ``masks`` allows."""

    def __init__(self, mode: ForwardMode, reqs: list[Req], prefix_lens: list[int], ids: list[list[int]],
                 positions: list[list[int]], masks: list[torch.Tensor], slots: torch.Tensor) -> None:
        super().__init__(mode, reqs, prefix_lens, [len(x) for x in ids], slots)
        self._ids, self._positions, self.masks = ids, positions, masks

    def input_ids(self) -> list[int]:
        return [t for x in self._ids for t in x]

    def positions(self) -> list[int]:
        return [p for x in self._positions for p in x]

    def forward_batch(self, runner: object, input_ids: torch.Tensor | None = None) -> ForwardBatch:
        fb = build_forward_batch(self, runner, input_ids)  # type: ignore[arg-type]
        fb.tree_masks = self.masks
        return fb


class TreeVerifyBatch(VerifyBatch):
    def __init__(self, reqs: list[Req], prefix_lens: list[int], trees: list[DraftTree], slots: torch.Tensor) -> None:
        super().__init__(reqs, prefix_lens, [t.tokens for t in trees], slots)
        self.trees = trees

    def positions(self) -> list[int]:
        pos: list[int] = []
        for p, t in zip(self.prefix_lens, self.trees):
            pos.append(p)
            pos.extend(p + t.depth(i) for i in range(len(t)))
        return pos

    def row_contexts(self, i: int) -> list[list[int]]:
        t = self.trees[i]
        return [[]] + [[t.tokens[a] for a in t.path(j)] for j in range(len(t))]


class TreeVerified(NamedTuple):
    result: VerifyResult
    forward_batch: ForwardBatch
    hidden: torch.Tensor
    accepted_rows: list[list[int]]  # per request, the rows of hidden (global) of its root and accepted nodes


def run_verify_tree(
    batch: ScheduleBatch, state: SchedulerState, executor: StepExecutor, trees: list[DraftTree],
    rows: list[list[int]], capture_hidden_layers: tuple[int, ...] = (),
) -> TreeVerified:
    """One TARGET_VERIFY forward over each request's last token and its tree (slots ``rows``, node order, from
    ``alloc_verify_slots``), the walk, and the accepted path's slots moved to the request's next positions.

    NOTE: the returned slots list the accepted path's first (their KV was computed over exactly that path), then the
    rest, which the scheduler frees. Page size 1 only: a path's slots are not a page's."""
    vb = TreeVerifyBatch(list(batch.reqs), list(batch.prefix_lens), trees, flat_slots(rows))
    fb, hidden, ids, lps = verify_forward(vb, executor, capture_hidden_layers, [t.mask() for t in trees])
    tokens: list[list[int]] = []
    logprobs: list[list[LogprobEntry | None]] = []
    slots: list[list[int]] = []
    accepted: list[list[int]] = []
    offset = 0
    for r, p, t, row in zip(vb.reqs, vb.prefix_lens, trees, rows):
        children: dict[tuple[int, int], int] = {(t.parents[i], t.tokens[i]): i for i in range(len(t))}
        path_rows = [0]
        node = -1
        while (child := children.get((node, ids[offset + path_rows[-1]]))) is not None:
            node = child
            path_rows.append(child + 1)
        tokens.append([ids[offset + j] for j in path_rows])
        logprobs.append([lps[offset + j] for j in path_rows])
        kept = [row[j] for j in path_rows]
        slots.append(kept + [s for j, s in enumerate(row) if j not in set(path_rows)])
        state.req_pool.write(int(r.req_pool_idx), p, torch.tensor(kept, dtype=torch.int64))  # type: ignore[arg-type]
        accepted.append([offset + j for j in path_rows])
        offset += 1 + len(t)
    return TreeVerified(VerifyResult(tokens, logprobs, slots, [len(t) for t in trees]), fb, hidden, accepted)
