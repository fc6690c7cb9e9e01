"""The LoRA backend contract: how a batch's low-rank adapter updates are added to its linear layers' outputs.

Backends register by name through ``sgl_lora_backends`` and are chosen by ``--lora-backend NAME``. The core builds
the chosen backend once at startup, after the base model is loaded, by calling ``create``; the backend is a
scheduler feature, so the scheduler calls it at the fixed points of ``sgl.core.scheduler.feature`` (admit a request
and its adapter, per token, release) from then on. The per-batch calls (the segmented low-rank GEMM over the batch's
adapter ids) join this contract with their call site in the linear layers, in the LoRA issue.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

from sgl.core.scheduler.feature import SchedulerFeature

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.runner.model_runner import ModelRunner

FLAG = "--lora-backend"

NOT_YET_SUPPORTED: tuple[str, ...] = ("triton", "csgmv")
"""SGLang's backend names, which no in-tree plugin implements yet: refused at startup with one line."""


class LoRABackend(SchedulerFeature):
    """One implementation of multi-adapter LoRA over a batch (SGMV-style kernels, or the torch reference)."""

    name = "lora"

    @classmethod
    @abstractmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> LoRABackend:
        """Built once per rank at startup from the server's arguments (the plugin's own options included: see
        ``sgl.core.plugin_options.plugin_args``) and the base model's runner. Raise ValueError to refuse the
        configuration; the message is the startup error."""
