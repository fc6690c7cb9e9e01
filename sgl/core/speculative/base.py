"""The speculative decoding contract: an algorithm drafts tokens that the target model then verifies.

Algorithms register by name through ``sgl_speculative_algorithms`` and are chosen by ``--speculative-algorithm
NAME``. The core builds the chosen algorithm once at startup, after the target model is loaded, by calling
``create``; the algorithm is a scheduler feature, so the scheduler calls it at the fixed points of
``sgl.core.scheduler.feature`` (admit, mask, per token, release) from then on. The calls that own a decode step's
shape (draft and verify forwards, accepted-token counts) join this contract with the speculative decoding issue.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

from sgl.core.scheduler.feature import SchedulerFeature

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.runner.model_runner import ModelRunner

FLAG = "--speculative-algorithm"

NOT_YET_SUPPORTED: tuple[str, ...] = ("EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM")
"""SGLang's algorithm names, which no in-tree plugin implements yet: refused at startup with one line."""


class SpeculativeAlgorithm(SchedulerFeature):
    """One way of proposing several tokens per decode step for the target model to verify."""

    name = "speculative"

    @classmethod
    @abstractmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> SpeculativeAlgorithm:
        """Built once per rank at startup from the server's arguments (the plugin's own options included: see
        ``sgl.core.plugin_options.plugin_args``) and the target's runner (its model config, device and pools).
        Raise ValueError to refuse the configuration; the message is the startup error."""
