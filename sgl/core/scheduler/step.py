"""StepExecutor: one ScheduleBatch through the model, the logits and the sampler."""

from __future__ import annotations

from typing import NamedTuple

import torch

from sgl.core.runner.input_prep import build_forward_batch
from sgl.core.runner.model_runner import ModelRunner
from sgl.core.sampling.batch_info import SamplingBatchInfo
from sgl.core.sampling.sampler import compute_prompt_logprobs
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.req import Req

LogprobEntry = tuple[tuple[float, int], list[tuple[float, int]]]


class StepResult(NamedTuple):
    next_token_ids: list[int]  # one per sampling request, in batch order
    logprobs: list[LogprobEntry | None]  # parallel to next_token_ids
    input_logprobs: dict[int, tuple[list[tuple[float | None, int]], list[list[tuple[float, int]]]]]


def _pairs(values: list[float], ids: list[int]) -> list[tuple[float, int]]:
    return [(float(v), int(i)) for v, i in zip(values, ids)]


class StepExecutor:
    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.sampler = runner.sampler

    @torch.inference_mode()
    def execute(self, batch: ScheduleBatch) -> StepResult:
        runner = self.runner
        fb = build_forward_batch(batch, runner)
        hidden = runner.forward(fb)
        if batch.mode.is_decode:
            rows = list(range(len(batch)))
            last = rows
        else:
            rows = [
                i for i in range(len(batch))
                if batch.completes_prefill(i) and batch.reqs[i].sampling_params.max_new_tokens > 0
            ]
            offsets = [0]
            for e in batch.extend_lens:
                offsets.append(offsets[-1] + e)
            last = [offsets[i + 1] - 1 for i in rows]
        input_lps = {} if batch.mode.is_decode else self._prompt_logprobs(batch, hidden)
        if not rows:
            return StepResult([], [], input_lps)
        reqs = [batch.reqs[i] for i in rows]
        index = torch.tensor(last, dtype=torch.int64, device=hidden.device)
        logits = runner.compute_logits(hidden.index_select(0, index))
        info = SamplingBatchInfo.build(
            [r.sampling_params for r in reqs], runner.vocab_size, logits.device,
            output_ids=[r.output_ids for r in reqs], prompt_ids=[r.origin_input_ids for r in reqs],
            eos_ids=[r.eos_ids for r in reqs],
        )
        want_lp = any(r.return_logprob for r in reqs)
        out = self.sampler(
            logits, info, return_logprob=want_lp,
            top_logprobs_nums=[r.top_logprobs_num for r in reqs] if want_lp else None,
        )
        next_ids = out.next_token_ids.tolist()
        lps: list[LogprobEntry | None] = [None] * len(reqs)
        if want_lp and out.next_token_logprobs is not None:
            chosen = out.next_token_logprobs.tolist()
            for j, r in enumerate(reqs):
                if r.return_logprob:
                    top = out.top_logprobs[j] if out.top_logprobs is not None else ([], [])
                    lps[j] = ((float(chosen[j]), next_ids[j]), _pairs(top[0], top[1]))
        return StepResult(next_ids, lps, input_lps)

    def _prompt_logprobs(
        self, batch: ScheduleBatch, hidden: torch.Tensor
    ) -> dict[int, tuple[list[tuple[float | None, int]], list[list[tuple[float, int]]]]]:
        """Logprob of each prompt token j >= logprob_start_len, from the logits at position j - 1."""
        result: dict[int, tuple[list[tuple[float | None, int]], list[list[tuple[float, int]]]]] = {}
        offset = 0
        for i, r in enumerate(batch.reqs):
            p, e = batch.prefix_lens[i], batch.extend_lens[i]
            if r.input_logprobs_done or not r.return_logprob or r.logprob_start_len < 0:
                offset += e
                continue
            prompt = r.origin_input_ids
            entries: list[tuple[float | None, int]] = []
            tops: list[list[tuple[float, int]]] = []
            start = min(r.logprob_start_len, len(prompt) - 1)
            if start == 0 and p == 0:
                entries.append((None, prompt[0]))
                tops.append([])
            lo, hi = max(p, start - 1), min(p + e, len(prompt) - 1)
            if hi > lo:
                local = torch.arange(lo - p + offset, hi - p + offset, device=hidden.device)
                logits = self.runner.compute_logits(hidden.index_select(0, local))
                targets = torch.tensor(prompt[lo + 1 : hi + 1], dtype=torch.int64, device=logits.device)
                lp, top = compute_prompt_logprobs(logits, targets, r.top_logprobs_num)
                for k, v in enumerate(lp.tolist()):
                    entries.append((float(v), prompt[lo + 1 + k]))
                    tops.append(_pairs(top[k][0], top[k][1]) if top else [])
            result[i] = (entries, tops)
            offset += e
        return result
