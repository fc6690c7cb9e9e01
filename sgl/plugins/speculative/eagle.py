"""EAGLE and EAGLE3: a one-layer draft head reads the target's hidden states and drafts a chain (or a tree) of tokens.

Flags (SGLang's): ``--speculative-draft-model-path`` (an EAGLE-1/2 or EAGLE-3 checkpoint), ``--speculative-num-steps``
(draft depth per step, default 3), ``--speculative-eagle-topk`` (1: a chain, ``--speculative-num-draft-tokens`` =
steps + 1; K > 1: EAGLE-2's dynamic tree of ``--speculative-num-draft-tokens`` - 1 nodes, ``eagle_tree.py``).

How a request's draft is kept (SGLang's layout): the draft head's row at position p pairs the target's feature at p
(its final hidden state; EAGLE-3: three layers' residual streams) with the token at p + 1, and predicts the feature
at p + 1. Every target forward (prefill chunk, plain decode, verify) hands its features to the algorithm
(``after_forward``; verify's directly); they wait in ``req.features`` until the token after them is known. A decode
step then (1) runs the draft over the waiting rows (an extend over the request's draft KV), which drafts d1 from its
last row, (2) chains: feeds (its own predicted feature, d_j) to draft d_(j+1), (3) verifies. Only the features of
accepted positions are kept for the next step, so the draft's guesses past the accepted run are recomputed from the
target's features next time.

NOTE: the draft's KV pool is its own but uses the target's slot numbers and request table: a verified position's
slot holds both models' KV, rejected slots are freed by the scheduler as usual (nothing for the draft to leak), and a
prefix the radix cache shares carries the draft KV its first owner computed. That KV can be stale: the row at a
shared prefix's last position pairs it with the owner's next token, which may not be this request's (SGLang keys its
radix cache by token pairs under EAGLE for this; ours keys by tokens), and a finished owner may leave draft guesses
at positions it never verified. Staleness only changes what is drafted, never what is emitted: every token is the
target's.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from sgl.core.model.config import ModelConfig
from sgl.core.runner.forward_batch import ForwardMode
from sgl.core.runner.input_prep import build_forward_batch
from sgl.core.runner.model_runner import ModelRunner
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.speculative.base import SpeculativeAlgorithm
from sgl.core.speculative.drafts import DeviceDrafts, chain_drafts
from sgl.core.speculative.tree import TreeBatch, run_verify_tree
from sgl.core.speculative.verify import alloc_verify_slots, draft_budget, may_draft, run_verify
from sgl.plugins.speculative.common import AcceptanceStats
from sgl.plugins.speculative.eagle_inputs import CatchUpRows, DraftInputs, draft_inputs
from sgl.plugins.speculative.eagle_models import TARGET_HIDDEN, EagleDraftHead, LlamaForCausalLMEagle3
from sgl.plugins.speculative.eagle_tree import draft_trees
from sgl.plugins.speculative.standalone import chain_steps, draft_dir

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.runner.forward_batch import ForwardBatch
    from sgl.core.scheduler.req import Req
    from sgl.core.scheduler.state import SchedulerState
    from sgl.core.scheduler.step import StepExecutor
    from sgl.core.speculative.verify import VerifyResult

logger = logging.getLogger(__name__)

DEFAULT_NUM_STEPS = 3
TREE_BACKENDS = ("torch_native", "triton")  # the attention backends that apply a tree mask


class EarlyCatchUp(NamedTuple):
    """A catch-up extend launched right after a verify, for the next step (``EagleAlgorithm._catch_up_early``)."""

    reqs: list[Req]
    feats: list[TargetFeatures]  # what it read: each request's waiting features, as they were
    counts: list[int]
    hidden: torch.Tensor  # [m, hidden] each request's last row's output, d1's feature
    tokens: torch.Tensor  # [m] d1

    def serves(self, reqs: list[Req], name: str) -> bool:
        """Whether it is the catch-up of exactly these requests' waiting rows (none came or went since)."""
        return len(reqs) == len(self.reqs) and all(
            a is b and a.features.get(name) is f and f.count == n
            for a, b, f, n in zip(reqs, self.reqs, self.feats, self.counts)
        )


@dataclass
class TargetFeatures:
    """The target's features of one request at positions ``start ..``, whose draft rows are not computed yet."""

    start: int
    chunks: list[torch.Tensor]
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count

    def joined(self) -> torch.Tensor:
        return self.chunks[0] if len(self.chunks) == 1 else torch.cat(self.chunks)


def build_draft_runner(args: ServerArgs, target: ModelRunner, path: str, architecture: str | None) -> ModelRunner:
    """The draft head's runner: its own KV pool, the size and page size of the target's (same slot numbers), and the
    target's request table, so a draft batch addresses a request's KV exactly as the target does; decode graphs
    for its chained steps where the target has graphs."""
    draft_args = dataclasses.replace(
        args, model_path=path, max_total_tokens=target.max_total_tokens, quantization=None,
        max_running_requests=target.max_running_requests, context_length=target.context_len, disable_cuda_graph=True,
    )
    runner = ModelRunner(draft_args, target.platform, path, target.parallel, architecture=architecture)
    if runner.max_total_tokens != target.max_total_tokens:
        raise ValueError(f"--speculative-draft-model-path {path}: its KV pool ({runner.max_total_tokens} tokens) "
                         f"cannot mirror the target's ({target.max_total_tokens})")
    runner.req_to_token_pool = target.req_to_token_pool
    runner.padding_req_slot = target.padding_req_slot  # NOTE: its own was a row of the table it no longer uses
    if not isinstance(runner.model, EagleDraftHead):
        raise ValueError(f"--speculative-draft-model-path {path}: {runner.model_config.architecture} is not an EAGLE "
                         "draft head (LlamaForCausalLMEagle, LlamaForCausalLMEagle3)")
    runner.model.bind_target(target.model)
    if target.graph_runner is not None:
        # NOTE: captured only now, over the target's request table (a graph keeps the table it was captured with)
        # and with the target's embedding bound; the chained draft steps replay them, the catch-up extend is eager
        runner.graph_runner = target.platform.graph_runner(runner)
        logger.info("EAGLE draft: decode graphs %s", "on" if runner.graph_runner is not None else "off")
    return runner


def tree_shape(args: ServerArgs, target: ModelRunner) -> tuple[int, int]:
    """(depth, nodes) of EAGLE-2's tree from --speculative-num-steps and --speculative-num-draft-tokens, or why not."""
    topk = int(args.speculative_eagle_topk or 1)
    steps = args.speculative_num_steps or DEFAULT_NUM_STEPS
    tokens = args.speculative_num_draft_tokens or steps * topk + 1
    if not 2 <= tokens <= steps * topk + 1:
        raise ValueError(f"--speculative-num-draft-tokens {tokens}: a tree of {steps} steps of top-{topk} verifies "
                         f"2 to {steps * topk + 1} tokens")
    if target.attention_backend_name not in TREE_BACKENDS or args.page_size != 1:
        raise ValueError(f"--speculative-eagle-topk {topk}: tree drafts need --attention-backend "
                         f"{' or '.join(TREE_BACKENDS)} and --page-size 1 (the tree attention mask); use "
                         "--speculative-eagle-topk 1 (a chain)")
    return steps, tokens - 1


class EagleAlgorithm(SpeculativeAlgorithm):
    """EAGLE-1/2 checkpoints: the draft reads the target's final hidden states."""

    algorithm = "EAGLE"
    # NOTE: EAGLE-1/2 checkpoints often name the plain Llama architecture; SGLang reads them as the EAGLE head too
    accepted: tuple[str, ...] = ("LlamaForCausalLMEagle", "LlamaForCausalLM")

    def __init__(self, target: ModelRunner, draft: ModelRunner, num_steps: int, capture: tuple[int, ...],
                 topk: int = 1, max_nodes: int = 0) -> None:
        self.target = target
        self.draft = draft
        self.head: EagleDraftHead = draft.model
        self.num_steps = num_steps
        self.topk = topk  # > 1: EAGLE-2's dynamic tree of at most ``max_nodes`` drafts
        self.max_nodes = max_nodes
        self.capture = capture  # target layers whose residual streams make the features (); the final hidden state
        self.stats = AcceptanceStats()
        self._early: EarlyCatchUp | None = None  # the next step's catch-up, launched after the last verify

    @classmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> EagleAlgorithm:
        path = server_args.speculative_draft_model_path
        if not path:
            raise ValueError(f"--speculative-algorithm {cls.algorithm} needs --speculative-draft-model-path")
        for flag in ("speculative_eagle_topk", "speculative_num_steps"):
            value = getattr(server_args, flag)
            if value is not None and value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1 (got {value})")
        topk = server_args.speculative_eagle_topk or 1
        if topk > 1:
            steps, max_nodes = tree_shape(server_args, runner)
        else:
            steps, max_nodes = chain_steps(server_args, DEFAULT_NUM_STEPS), 0
        local = draft_dir(server_args, path)
        arch = ModelConfig.from_dir(local).architecture
        if arch not in cls.accepted:
            raise ValueError(f"--speculative-draft-model-path {path} is a {arch} checkpoint; "
                             f"--speculative-algorithm {cls.algorithm} reads {' or '.join(cls.accepted)}")
        draft = build_draft_runner(server_args, runner, local, cls.accepted[0])
        capture = cls.capture_layers(draft, runner)
        runner.capture_hidden_in_graphs(capture)  # NOTE: EAGLE-3's plain decode steps (every step hands features)
        if topk == 1:
            runner.capture_verify_graphs(steps + 1, capture)
        elif runner.capture_verify_graphs(max_nodes + 1, capture, tree=True):
            logger.info("--speculative-eagle-topk %d: tree verify forwards replay graphs; tree drafting runs eagerly",
                        topk)
        if draft.graph_runner is not None:
            # NOTE: after a verify the catch-up covers the accepted positions, at most steps + 1 per request (the
            # first one after a prefill covers the prompt and runs eagerly)
            width = draft.model.target_hidden_size * max(1, len(capture))
            draft.capture_verify_graphs(steps + 1, mode=ForwardMode.EXTEND, row_inputs={TARGET_HIDDEN: width})
        return cls(runner, draft, steps, capture, topk, max_nodes)

    @classmethod
    def capture_layers(cls, draft: ModelRunner, target: ModelRunner) -> tuple[int, ...]:
        return ()

    # the target's features -------------------------------------------------------------------------------------
    def before_forward(self, batch: ScheduleBatch, forward_batch: ForwardBatch) -> None:
        forward_batch.capture_hidden_layers = self.capture

    def _features(self, fb: ForwardBatch, hidden: torch.Tensor) -> torch.Tensor:
        if not self.capture:
            return hidden
        return torch.cat([fb.captured_hidden[layer] for layer in self.capture], dim=-1)

    def _keep(self, r: Req, start: int, rows: torch.Tensor) -> None:
        old: TargetFeatures | None = r.features.get(self.name)
        if old is not None and old.end == start:
            old.chunks.append(rows)
            old.count += rows.shape[0]
        else:  # NOTE: a gap (retraction, a step without features) restarts the rows from here
            r.features[self.name] = TargetFeatures(start, [rows], rows.shape[0])

    def after_forward(self, batch: ScheduleBatch, forward_batch: ForwardBatch, hidden: torch.Tensor) -> None:
        fb = forward_batch
        if fb.forward_mode.is_decode:
            starts, lens = [s - 1 for s in fb.seq_lens_cpu], [1] * fb.batch_size
        elif fb.extend_prefix_lens_cpu is not None and fb.extend_seq_lens_cpu is not None:
            starts, lens = fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu
        else:
            return
        feats = self._features(fb, hidden)
        if fb.forward_mode.is_decode:
            feats = feats.clone()  # NOTE: a decode graph's output buffer is overwritten by its next replay
        offset = 0
        for r, start, n in zip(batch.reqs, starts, lens):
            if n:
                self._keep(r, start, feats[offset : offset + n])
            offset += n

    # a decode step ---------------------------------------------------------------------------------------------
    def _budget(self, r: Req, last_pos: int, executor: StepExecutor) -> int:
        """Drafts for ``r`` this step: none unless its waiting features end right before its last token."""
        k = draft_budget(r, self.num_steps, self.target.context_len) if may_draft(r, executor) else 0
        if self.topk > 1 and r.seq_len + self.topk * self.num_steps + 1 > self.target.context_len:
            k = 0  # NOTE: a tree's nodes take request-table columns past the sequence, one per node
        feats: TargetFeatures | None = r.features.get(self.name)
        if k and feats is not None and feats.end == last_pos:
            return k
        r.features.pop(self.name, None)  # NOTE: of no use to a request that does not draft now; bounds memory
        return 0

    def decode_step(self, batch: ScheduleBatch, state: SchedulerState, executor: StepExecutor) -> VerifyResult | None:
        budgets = [self._budget(r, p, executor) for r, p in zip(batch.reqs, batch.prefix_lens)]
        if not any(budgets):
            return None
        if self.topk > 1:
            return self._tree_step(batch, state, executor, budgets)
        rows = alloc_verify_slots(batch, state, budgets)
        if rows is None:
            return None
        drafts = self._draft(batch, budgets, rows)
        verified = run_verify(batch, executor, drafts, rows, self.capture, self.accept)
        feats = self._features(verified.forward_batch, verified.hidden)
        offset = 0
        for r, p, k, tokens in zip(batch.reqs, batch.prefix_lens, verified.result.drafted, verified.result.tokens):
            r.features.pop(self.name, None)
            self._keep(r, p, feats[offset : offset + len(tokens)])  # the accepted positions' features only
            offset += 1 + k
        self.stats.record(verified.result)
        self._early = self._catch_up_early(batch, verified.result)
        return verified.result

    def release(self, req: Req) -> None:
        super().release(req)
        if self._early is not None and any(r is req for r in self._early.reqs):
            self._early = None  # NOTE: it can serve no step now; holding it would keep the request alive

    def _tree_step(
        self, batch: ScheduleBatch, state: SchedulerState, executor: StepExecutor, budgets: list[int]
    ) -> VerifyResult | None:
        trees = draft_trees(self, batch, state, budgets, self.topk, self.max_nodes)
        if trees is None:
            return None
        rows = alloc_verify_slots(batch, state, [len(t) for t in trees])
        if rows is None:
            # NOTE: the scratch slots took the decode slots' column in the request table: put them back. The
            # features went into the draft; the plain decode's restart the rows.
            for r, p, slot in zip(batch.reqs, batch.prefix_lens, batch.out_cache_loc.tolist()):
                state.req_pool.write(int(r.req_pool_idx), p, torch.tensor([int(slot)], dtype=torch.int64))  # type: ignore[arg-type]
            return None
        verified = run_verify_tree(batch, state, executor, trees, rows, self.capture)
        feats = self._features(verified.forward_batch, verified.hidden)
        for r, p, accepted in zip(batch.reqs, batch.prefix_lens, verified.accepted_rows):
            r.features.pop(self.name, None)
            self._keep(r, p, feats.index_select(0, torch.tensor(accepted, device=feats.device)))
        self.stats.record(verified.result)
        return verified.result

    @torch.inference_mode()
    def _draft(self, batch: ScheduleBatch, budgets: list[int], rows: list[list[int]]) -> DeviceDrafts:
        """The chain of each request with a budget, left on the device (``sgl.core.speculative.drafts``): the catch-up
        extend over each request's waiting rows drafts d1 (unless it ran right after the last verify), then each
        chained step reads the tokens the step before it picked on the device; the host reads none of them here, and
        the step's inputs travel in one transfer (``eagle_inputs``)."""
        idx = [i for i, k in enumerate(budgets) if k]
        reqs = [batch.reqs[i] for i in idx]
        pool = [int(r.req_pool_idx) for r in reqs]  # type: ignore[arg-type]  # scheduled: always set
        early, self._early = self._early, None
        if early is not None and not early.serves(reqs, self.name):
            early = None
        feats: list[TargetFeatures] = [r.features.pop(self.name) for r in reqs]
        catch_up = None if early is not None else self._waiting_rows(reqs, feats)
        write = not self.target.req_to_token_pool.on_host  # NOTE: a CPU's table is the mirror already written
        plan = draft_inputs(self.draft, catch_up, batch.prefix_lens, budgets, rows, idx, pool, write)
        if early is not None:
            hidden, tokens = early.hidden, early.tokens
        else:
            hidden = self._catch_up(plan, feats)
            tokens = self._pick(hidden)
        columns: list[tuple[list[int], torch.Tensor]] = [(plan.members[0], tokens)]
        # the chain: (predicted feature, d_j) at position last + j - 1 drafts d_(j+1), at verify's slots
        for j, step in enumerate(plan.chain, start=1):
            if step.select is not None:
                hidden, tokens = hidden.index_select(0, step.select), tokens.index_select(0, step.select)
            step.batch.input_ids = tokens
            step.batch.extras[TARGET_HIDDEN] = hidden.to(self.draft.dtype)
            hidden = self.draft.forward(step.batch)
            tokens = self._pick(hidden)
            columns.append((plan.members[j], tokens))
        pinned = bool(self.draft.platform.capabilities.pinned_memory)
        return DeviceDrafts(chain_drafts(columns, budgets, pinned), list(budgets))

    def _waiting_rows(self, reqs: list[Req], feats: list[TargetFeatures]) -> CatchUpRows:
        """The catch-up rows of each request: (feature at p, token at p + 1) for its waiting positions p, at the
        target's slots (read from the request table's host mirror)."""
        table = self.target.req_to_token_pool
        pool = [int(r.req_pool_idx) for r in reqs]  # type: ignore[arg-type]  # scheduled: always set
        ids: list[int] = []
        slots: list[int] = []
        for r, p, f in zip(reqs, pool, feats):
            ids += r.token_slice(f.start + 1, f.end + 1)
            slots += table.read_list(p, f.start, f.end)
        return CatchUpRows(pool, [f.start for f in feats], [f.count for f in feats], ids, slots)

    def catch_up(self, batch: ScheduleBatch, idx: list[int], reqs: list[Req]) -> torch.Tensor:
        """The waiting rows of each drafting request (``idx``: their rows in ``batch``) through the draft head.
        Returns each request's last row's output, the feature d1 is drafted from [m, hidden]."""
        feats: list[TargetFeatures] = [r.features.pop(self.name) for r in reqs]
        rows = self._waiting_rows(reqs, feats)
        plan = draft_inputs(self.draft, rows, batch.prefix_lens, [1], [], [], rows.pool, False)
        return self._catch_up(plan, feats)

    def _catch_up(self, plan: DraftInputs, feats: list[TargetFeatures]) -> torch.Tensor:
        fb = plan.catch_up
        assert fb is not None
        rows = [f.joined() for f in feats]
        fb.extras[TARGET_HIDDEN] = (rows[0] if len(rows) == 1 else torch.cat(rows)).to(self.draft.dtype)
        hidden = self.draft.forward(fb)
        return hidden if plan.last is None else hidden.index_select(0, plan.last)

    @torch.inference_mode()
    def _catch_up_early(self, batch: ScheduleBatch, result: VerifyResult) -> EarlyCatchUp | None:
        """Right after a verify, before the scheduler applies its tokens and does its slot bookkeeping: the next
        step's catch-up extend (the accepted positions' rows) and d1, launched now so the device runs them while the
        host does that work. Only for requests that drafted and will draft again (the next step checks it is still
        theirs, else runs its own); its KV writes are the ones the next catch-up would make, at the request's own
        accepted slots, so a request that ends meanwhile loses nothing but the work."""
        picked: list[tuple[Req, TargetFeatures, int, list[int], list[int]]] = []
        for r, p, k, tokens, slots in zip(batch.reqs, batch.prefix_lens, result.drafted, result.tokens, result.slots):
            f: TargetFeatures | None = r.features.get(self.name)
            n = len(tokens)
            if (k and f is not None and f.start == p and f.count == n and r.remaining_new_tokens - n >= 2
                    and self.target.context_len - r.seq_len - n >= 2):
                picked.append((r, f, n, tokens, slots[:n]))
        if not picked:
            return None
        reqs = [x[0] for x in picked]
        feats = [x[1] for x in picked]
        pool = [int(r.req_pool_idx) for r in reqs]  # type: ignore[arg-type]  # scheduled: always set
        # NOTE: the token after position p + j is the j-th token this step emits (they are appended later)
        rows = CatchUpRows(pool, [f.start for f in feats], [f.count for f in feats],
                           [t for x in picked for t in x[3]], [s for x in picked for s in x[4]])
        plan = draft_inputs(self.draft, rows, [f.start for f in feats], [1], [], [], pool, False)
        hidden = self._catch_up(plan, feats)
        return EarlyCatchUp(reqs, feats, rows.counts, hidden, self._pick(hidden))

    def run_draft(self, sb: ScheduleBatch, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The draft head over ``sb``, fed ``ids`` and the features ``feats`` (both on the draft's device)."""
        if isinstance(sb, TreeBatch):
            fb = sb.forward_batch(self.draft, ids)
        else:
            fb = build_forward_batch(sb, self.draft, ids)
        fb.extras[TARGET_HIDDEN] = feats.to(self.draft.dtype)
        return self.draft.forward(fb)

    def _pick(self, hidden: torch.Tensor) -> torch.Tensor:
        """The draft's greedy token (target ids) after each feature."""
        return self.head.to_target_ids(self.head.compute_logits(hidden).argmax(dim=-1))

    def info(self) -> dict[str, Any]:
        return self.stats.as_info(self.algorithm)


class Eagle3Algorithm(EagleAlgorithm):
    """EAGLE-3 checkpoints: the draft reads three target layers (low, middle, high)."""

    algorithm = "EAGLE3"
    accepted = ("LlamaForCausalLMEagle3",)

    @classmethod
    def capture_layers(cls, draft: ModelRunner, target: ModelRunner) -> tuple[int, ...]:
        """SGLang's choice: the residual streams entering layers 2, n // 2 and n - 3 of an n-layer target, or those
        leaving the layers the checkpoint's ``eagle_aux_hidden_state_layer_ids`` names."""
        n = target.model_config.num_layers
        head = draft.model
        assert isinstance(head, LlamaForCausalLMEagle3)
        ids = head.aux_layers
        layers = (2, n // 2, n - 3) if ids is None else tuple(i + 1 for i in ids)
        if len(layers) != 3 or not all(0 <= layer <= n for layer in layers):
            raise ValueError(f"--speculative-draft-model-path: EAGLE-3 reads three layers of the target's {n}, "
                             f"got {list(layers)} (set eagle_config.eagle_aux_hidden_state_layer_ids in its config)")
        return layers


class NextNAlgorithm(EagleAlgorithm):
    """DeepSeek-V3's multi-token-prediction layer, read from the target's own checkpoint, drafts as an EAGLE head
    (SGLang's NEXTN). ``--speculative-draft-model-path`` defaults to the target's path."""

    algorithm = "NEXTN"
    accepted = ("DeepseekV3ForCausalLMNextN", "DeepseekV3ForCausalLM")

    @classmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> EagleAlgorithm:
        if server_args.speculative_draft_model_path is None:
            server_args = dataclasses.replace(server_args, speculative_draft_model_path=runner.model_config.path)
        return super().create(server_args, runner)
