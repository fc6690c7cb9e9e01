"""The scheduler-feature contract (DESIGN 4.5): what acts per request and per step, at fixed points.

Grammar-constrained decoding runs through it today; speculation and LoRA are meant to. The scheduler calls every
feature at the same points and names none of them; a feature sees requests, never the scheduler's queues.

The points, in a request's life:
- ``admit``: on arrival; prepare per-request state (start a compile), or refuse the request with a reason;
- ``ready``: prefill admits a request only once every feature says it is ready (a compile still running);
- ``settle``: once per step; finish requests whose preparation failed; may sleep briefly when nothing can run;
- ``logit_mask``: before sampling, a forbidden-token mask for the batch rows the feature owns;
- ``needs_host_tokens``: sampling that needs the token still in flight (so overlap defers it);
- ``on_token``: after a sampled token is appended; may end the request or find tokens to splice in;
- ``take_splice``: tokens to append without sampling once no step of the request is in flight (they are
  recomputed through prefill, where the radix cache holds everything before them);
- ``resync``: the request's outputs changed without ``on_token`` (retraction, a splice);
- ``before_forward``: a batch is about to run; per-batch state the model reads (LoRA's adapter segments);
- ``after_forward``: its forward was enqueued; the hidden states it made (a speculative draft head reads them);
- ``release``: the request ended (finish, abort, error alike): free what the feature holds for it.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sgl.core.ipc import FinishReason
    from sgl.core.runner.forward_batch import ForwardBatch
    from sgl.core.scheduler.batch import ScheduleBatch
    from sgl.core.scheduler.req import Req


class SchedulerFeature(ABC):  # noqa: B024 - every point has a do-nothing default; a feature overrides what it uses
    """One feature's view of the scheduler. Per-request state lives in ``req.features[self.name]``."""

    name: str = "feature"

    def admit(self, req: Req) -> FinishReason | None:
        """Called once when the request arrives; a reason refuses it (it finishes unscheduled)."""
        return None

    def ready(self, req: Req) -> bool:
        return True

    def settle(self, idle: bool) -> list[tuple[Req, FinishReason]]:
        """Once per step: requests to finish now. ``idle`` is True when no other work can run this step."""
        return []

    def needs_host_tokens(self, req: Req) -> bool:
        return False

    def logit_mask(
        self, reqs: Sequence[Req], vocab_size: int, device: torch.device, pinned: bool
    ) -> torch.Tensor | None:
        """bool ``[len(reqs), vocab_size]``, True = forbidden, or None when the feature owns none of the rows.

        NOTE: called only once every earlier token of these requests went through ``on_token``."""
        return None

    def on_token(self, req: Req, token: int) -> FinishReason | None:
        """After ``token`` was appended to ``req.output_ids``; a reason ends the request here."""
        return None

    def wants_splice(self, req: Req) -> bool:
        """True when ``take_splice`` has tokens for ``req`` (it then leaves chained decode steps)."""
        return False

    def take_splice(self, req: Req) -> list[int]:
        """The tokens to append without sampling (already accepted by the feature's own state), or []."""
        return []

    def resync(self, req: Req) -> None:
        return None

    def before_forward(self, batch: ScheduleBatch, forward_batch: ForwardBatch) -> None:
        """Called once per forward, after its inputs are built and before the model runs."""
        return None

    def after_forward(self, batch: ScheduleBatch, forward_batch: ForwardBatch, hidden: torch.Tensor) -> None:
        """Called once per forward, right after the model ran: ``hidden`` is its final hidden states [T, hidden]
        (row j is the batch's token j), ``forward_batch.captured_hidden`` the layers asked for in
        ``before_forward``. NOTE: the tensors may still be in flight on the device; read them on its stream."""
        return None

    def release(self, req: Req) -> None:
        req.features.pop(self.name, None)

    def call(self, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A control operation sent to this feature while serving (``ipc.FeatureCallReq``): loading a LoRA adapter.
        Raise ValueError to refuse it; the message is the caller's error."""
        raise ValueError(f"the {self.name} feature has no operation {method!r}")

    def info(self) -> dict[str, Any]:
        """Counters merged into the server info."""
        return {}

    def close(self) -> None:
        return None
