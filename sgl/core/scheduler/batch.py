"""ScheduleBatch: the scheduler's CPU-side decision for one step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sgl.core.runner.forward_batch import ForwardMode
from sgl.core.scheduler.req import Req


@dataclass
class ScheduleBatch:
    """Which requests run this step, and which of their tokens.

    NOTE: request i computes tokens ``all_ids()[prefix_lens[i] : prefix_lens[i] + extend_lens[i]]``; their KV slots
    are ``out_cache_loc`` (concatenated in request order; a DECODE run of ``steps`` holds each request's
    ``steps`` slots together, for positions ``prefix_lens[i] ..``), already written into req_to_token for EXTEND batches
    and written by ``build_forward_batch`` (on the device, without a host sync) for DECODE batches.
    """

    mode: ForwardMode
    reqs: list[Req]
    prefix_lens: list[int]
    extend_lens: list[int]
    out_cache_loc: torch.Tensor  # [sum(extend_lens) * steps] int64, CPU or device (a run: request-major)
    steps: int = 1  # DECODE only: a run of this many decode steps launched back to back (``decode.DecodeRuns``)

    @property
    def seq_lens(self) -> list[int]:
        return [p + e for p, e in zip(self.prefix_lens, self.extend_lens)]

    def input_ids(self) -> list[int]:
        if self.mode.is_decode:
            return [r.output_ids[-1] if r.output_ids else r.origin_input_ids[-1] for r in self.reqs]
        ids: list[int] = []
        for r, p, e in zip(self.reqs, self.prefix_lens, self.extend_lens):
            ids.extend(r.token_slice(p, p + e))
        return ids

    def positions(self) -> list[int]:
        if self.mode.is_decode:
            return [p for p in self.prefix_lens]
        pos: list[int] = []
        for p, e in zip(self.prefix_lens, self.extend_lens):
            pos.extend(range(p, p + e))
        return pos

    def completes_prefill(self, i: int) -> bool:
        """True when request i has KV for its whole sequence after this step, so it samples a token."""
        return self.prefix_lens[i] + self.extend_lens[i] == self.reqs[i].seq_len

    def __len__(self) -> int:
        return len(self.reqs)
