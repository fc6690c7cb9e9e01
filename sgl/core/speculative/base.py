"""The speculative decoding contract: an algorithm drafts tokens that the target model then verifies.

Algorithms register by name through ``sgl_speculative_algorithms`` and are chosen by ``--speculative-algorithm
NAME``. The core builds the chosen algorithm once at startup, after the target model is loaded, by calling
``create``; that is all it calls today. The per-step calls (draft, verify, accept) join this contract together with
their call site in the scheduler, in the speculative decoding issue.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.runner.model_runner import ModelRunner

FLAG = "--speculative-algorithm"

NOT_YET_SUPPORTED: tuple[str, ...] = ("EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM")
"""SGLang's algorithm names, which no in-tree plugin implements yet: refused at startup with one line."""


class SpeculativeAlgorithm(ABC):
    """One way of proposing several tokens per decode step for the target model to verify."""

    @classmethod
    @abstractmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> SpeculativeAlgorithm:
        """Built once per rank at startup from the server's arguments (the plugin's own options included: see
        ``sgl.core.plugin_options.plugin_args``) and the target's runner (its model config, device and pools).
        Raise ValueError to refuse the configuration; the message is the startup error."""
