"""STANDALONE: a smaller model with the target's tokenizer drafts ``--speculative-num-steps`` tokens greedily, one
forward each (the first also catches up on the tokens it has not seen); the target verifies them in one forward.

Flags (SGLang's): ``--speculative-draft-model-path`` (required), ``--speculative-num-steps`` (drafts per step,
default 3), ``--speculative-num-draft-tokens`` (if given: num-steps + 1, the chain's length), ``--speculative-eagle-topk``
(if given: 1; trees are not supported yet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sgl.core.model.hub import download, is_hub_id
from sgl.plugins.speculative.common import DraftingAlgorithm
from sgl.plugins.speculative.draft_model import DraftModel

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.runner.model_runner import ModelRunner
    from sgl.core.scheduler.req import Req

DEFAULT_NUM_STEPS = 3


def chain_steps(server_args: ServerArgs, default: int) -> int:
    """The drafts per step of a chain, from --speculative-num-steps; the other shape flags must agree with it."""
    steps = server_args.speculative_num_steps or default
    n = server_args.speculative_num_draft_tokens
    if n is not None and n != steps + 1:
        raise ValueError(f"--speculative-num-draft-tokens {n}: a chain of {steps} draft steps verifies {steps + 1} "
                         "tokens (tree drafts are not supported yet)")
    topk = server_args.speculative_eagle_topk
    if topk is not None and topk != 1:
        raise ValueError(f"--speculative-eagle-topk {topk}: tree drafts are not supported yet (topk 1 only)")
    return steps


def draft_dir(server_args: ServerArgs, path: str) -> str:
    """The draft's local directory; a Hub id is downloaded at --speculative-draft-model-revision."""
    if not is_hub_id(path):
        return path
    return download(path, server_args.speculative_draft_model_revision, server_args.download_dir,
                    server_args.load_format != "dummy")


class StandaloneAlgorithm(DraftingAlgorithm):
    algorithm = "STANDALONE"

    def __init__(self, draft: DraftModel, num_steps: int, context_len: int) -> None:
        super().__init__(num_steps, context_len)
        self.draft = draft

    @classmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> StandaloneAlgorithm:
        path = server_args.speculative_draft_model_path
        if not path:
            raise ValueError("--speculative-algorithm STANDALONE needs --speculative-draft-model-path")
        steps = chain_steps(server_args, DEFAULT_NUM_STEPS)
        draft = DraftModel(server_args, runner, draft_dir(server_args, path), "speculative.draft")
        runner.capture_verify_graphs(steps + 1)
        return cls(draft, steps, runner.context_len)

    def propose(self, reqs: list[Req], budgets: list[int]) -> list[list[int]]:
        return self.draft.propose(reqs, budgets)

    def release(self, r: Req) -> None:
        self.draft.release(r)
