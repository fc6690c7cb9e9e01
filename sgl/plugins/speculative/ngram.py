"""NGRAM: drafts the tokens that followed the newest earlier occurrence of a request's last tokens, in its own
prompt and output first, else in recent requests' sequences. No draft model: a draft costs a dictionary lookup.

Flags (SGLang's): ``--speculative-num-draft-tokens`` (tokens verified per request per step, its last token
included), ``--speculative-ngram-min-match-window-size`` / ``--speculative-ngram-max-match-window-size`` (the
suffix lengths matched, longest first), ``--speculative-ngram-branch-length`` (the longest continuation drafted),
``--speculative-ngram-capacity`` (n-grams kept from recent requests). Drafts are chains (one branch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sgl.plugins.speculative.common import DraftingAlgorithm
from sgl.plugins.speculative.ngram_index import SequenceIndex, SharedNgrams

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.runner.model_runner import ModelRunner
    from sgl.core.scheduler.req import Req

DEFAULT_DRAFT_TOKENS = 8


class NgramAlgorithm(DraftingAlgorithm):
    algorithm = "NGRAM"

    def __init__(self, max_drafts: int, context_len: int, min_n: int, max_n: int, branch_length: int,
                 capacity: int) -> None:
        super().__init__(max_drafts, context_len)
        if not 1 <= min_n <= max_n:
            raise ValueError(f"--speculative-ngram-min-match-window-size {min_n} and "
                             f"--speculative-ngram-max-match-window-size {max_n}: need 1 <= min <= max")
        if branch_length < 1 or capacity < 0:
            raise ValueError("--speculative-ngram-branch-length must be >= 1 and --speculative-ngram-capacity >= 0")
        self.min_n, self.max_n = min_n, max_n
        self.branch_length = branch_length
        self.shared = SharedNgrams(min_n, max_n, branch_length, capacity)

    @classmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> NgramAlgorithm:
        for flag in ("speculative_draft_model_path", "speculative_num_steps", "speculative_eagle_topk"):
            if getattr(server_args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')}: NGRAM has no draft model (its flag is "
                                 "--speculative-num-draft-tokens)")
        n = server_args.speculative_num_draft_tokens or DEFAULT_DRAFT_TOKENS
        algorithm = cls(n - 1, runner.context_len, server_args.speculative_ngram_min_match_window_size,
                        server_args.speculative_ngram_max_match_window_size,
                        server_args.speculative_ngram_branch_length, server_args.speculative_ngram_capacity)
        runner.capture_verify_graphs(n)
        return algorithm

    def _index(self, r: Req) -> SequenceIndex:
        index = r.features.get(self.name)
        if index is None:
            index = r.features[self.name] = SequenceIndex(self.min_n, self.max_n)
        return index

    def propose(self, reqs: list[Req], budgets: list[int]) -> list[list[int]]:
        drafts: list[list[int]] = []
        for r, k in zip(reqs, budgets):
            k = min(k, self.branch_length)
            if k <= 0:
                drafts.append([])
                continue
            seq = r.all_ids()
            drafts.append(self._index(r).draft(seq, k) or self.shared.draft(seq, k))
        return drafts

    def release(self, r: Req) -> None:
        if r.features.pop(self.name, None) is not None and self.shared.capacity:
            self.shared.add(r.all_ids())
