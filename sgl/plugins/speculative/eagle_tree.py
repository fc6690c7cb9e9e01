"""EAGLE-2's dynamic draft tree (``--speculative-eagle-topk K`` > 1): expand the K best children of the K best
frontier nodes per step, ranked by the draft's cumulative log probability, then keep the
``--speculative-num-draft-tokens`` - 1 best nodes of the whole tree for one tree verify.

Each expansion runs the draft head over every node drafted so far (at most K per depth, a few dozen tokens) with a
tree attention mask, at scratch slots taken from the pool for the step and given back before verification; a node's
input is its token and its parent's predicted feature, at position last + depth - 1, as in the chain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from sgl.core.runner.forward_batch import ForwardMode
from sgl.core.speculative.tree import DraftTree, TreeBatch

if TYPE_CHECKING:
    from sgl.core.runner.model_runner import ModelRunner
    from sgl.core.scheduler.batch import ScheduleBatch
    from sgl.core.scheduler.req import Req
    from sgl.core.scheduler.state import SchedulerState
    from sgl.plugins.speculative.eagle_models import EagleDraftHead


class TreeDrafter(Protocol):
    """What growing a tree takes of the EAGLE algorithm (``EagleAlgorithm``): its head, its draft runner, the
    catch-up of the target's features and one draft forward."""

    head: EagleDraftHead
    draft: ModelRunner

    def catch_up(self, batch: ScheduleBatch, idx: list[int], reqs: list[Req]) -> torch.Tensor: ...

    def run_draft(self, sb: ScheduleBatch, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor: ...


class _Growing:
    """One request's tree while it grows: tokens, parents, cumulative scores, depths, and each node's output."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.scores: list[float] = []
        self.depths: list[int] = []
        self.frontier: list[int] = []

    def add(self, token: int, parent: int, score: float) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.scores.append(score)
        self.depths.append(1 if parent < 0 else self.depths[parent] + 1)
        return len(self.tokens) - 1

    def tree(self) -> DraftTree:
        return DraftTree(self.tokens, self.parents)

    def best(self, n: int) -> DraftTree:
        """The ``n`` best nodes (a child never outscores its parent: ties go to the shallower), parents first."""
        order = sorted(range(len(self.tokens)), key=lambda i: (-self.scores[i], self.depths[i], i))
        kept: set[int] = set()
        for i in order:
            if len(kept) == n:
                break
            if self.parents[i] < 0 or self.parents[i] in kept:
                kept.add(i)
        nodes = sorted(kept, key=lambda i: (self.depths[i], i))
        where = {old: new for new, old in enumerate(nodes)}
        return DraftTree([self.tokens[i] for i in nodes], [where.get(self.parents[i], -1) for i in nodes])


def _top(alg: TreeDrafter, hidden: torch.Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """Per feature row, the draft's k best next tokens (target ids) and their log probabilities."""
    logp = torch.log_softmax(alg.head.compute_logits(hidden), dim=-1)
    values, ids = logp.topk(k, dim=-1)
    target = alg.head.to_target_ids(ids.reshape(-1)).view(ids.shape)
    return values.tolist(), target.tolist()


@torch.inference_mode()
def draft_trees(
    alg: TreeDrafter, batch: ScheduleBatch, state: SchedulerState, budgets: list[int], topk: int, max_nodes: int
) -> list[DraftTree] | None:
    """Per request of ``batch``, a tree of at most ``max_nodes`` nodes and depth ``budgets[i]`` (empty where 0);
    None (nothing changed) when the pool has no room for the scratch slots."""
    idx = [i for i, k in enumerate(budgets) if k]
    reqs = [batch.reqs[i] for i in idx]
    need = [topk * budgets[i] for i in idx]
    state.make_room(sum(need))
    scratch = state.allocator.alloc(sum(need))
    if scratch is None:
        return None
    try:
        return _grow(alg, batch, state, budgets, topk, max_nodes, idx, reqs, need, scratch.tolist())
    finally:
        state.allocator.free(scratch)


def _grow(
    alg: TreeDrafter, batch: ScheduleBatch, state: SchedulerState, budgets: list[int], topk: int, max_nodes: int,
    idx: list[int], reqs: list[Req], need: list[int], scratch: list[int],
) -> list[DraftTree]:
    device = alg.draft.device
    root = alg.catch_up(batch, idx, reqs)  # [m, hidden]: the feature each request's depth-1 nodes read
    grown = [_Growing() for _ in idx]
    values, tokens = _top(alg, root, topk)
    for g, vs, ts in zip(grown, values, tokens):
        g.frontier = [g.add(t, -1, v) for v, t in zip(vs, ts)]
    outputs: list[torch.Tensor | None] = [None] * len(idx)  # per request, each node's output feature
    starts = [sum(need[:m]) for m in range(len(idx))]
    for depth in range(1, max(budgets)):
        live = [m for m in range(len(idx)) if budgets[idx[m]] > depth]
        if not live:
            break
        ids, positions, masks, slots, feats = [], [], [], [], []
        for m in live:
            g, r, last = grown[m], reqs[m], batch.prefix_lens[idx[m]]
            n = len(g.tokens)
            mine = scratch[starts[m] : starts[m] + n]
            state.req_pool.write(int(r.req_pool_idx), last, torch.tensor(mine, dtype=torch.int64))  # type: ignore[arg-type]
            ids.append(g.tokens)
            positions.append([last - 1 + d for d in g.depths])
            masks.append(g.tree().mask(with_root=False))
            slots.extend(mine)
            out = outputs[m]
            feats.append(torch.stack([root[m] if p < 0 else out[p] for p in g.parents]))  # type: ignore[index]
        tb = TreeBatch(ForwardMode.EXTEND, [reqs[m] for m in live], [batch.prefix_lens[idx[m]] for m in live], ids,
                       positions, masks, torch.tensor(slots, dtype=torch.int64))
        flat_ids = torch.tensor([t for x in ids for t in x], dtype=torch.int64, device=device)
        hidden = alg.run_draft(tb, flat_ids, torch.cat(feats))
        offset = 0
        for m, x in zip(live, ids):
            mine_out = outputs[m] = hidden[offset : offset + len(x)]
            offset += len(x)
            g = grown[m]
            values, tokens = _top(alg, mine_out.index_select(0, torch.tensor(g.frontier, device=device)), topk)
            cands = [(g.scores[f] + v, t, f) for f, vs, ts in zip(g.frontier, values, tokens) for v, t in zip(vs, ts)]
            cands.sort(key=lambda c: -c[0])
            g.frontier = [g.add(t, f, score) for score, t, f in cands[:topk]]
    return _assemble(budgets, grown, max_nodes)


def _assemble(budgets: list[int], grown: list[_Growing], max_nodes: int) -> list[DraftTree]:
    out: list[DraftTree] = []
    it = iter(grown)
    for k in budgets:
        out.append(next(it).best(max_nodes) if k else DraftTree([], []))
    return out
