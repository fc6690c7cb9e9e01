"""StepExecutor: one ScheduleBatch through the model, the logits and the sampler."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from sgl.core.runner.input_prep import build_decode_run, build_forward_batch
from sgl.core.runner.model_runner import ModelRunner
from sgl.core.sampling.batch_info import SamplingBatchInfo, step_seed
from sgl.core.sampling.sampler import SampleOutput, compute_prompt_logprobs
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.feature import SchedulerFeature
from sgl.core.scheduler.req import Req
from sgl.core.transfer import to_device

LogprobEntry = tuple[tuple[float, int], list[tuple[float, int]]]


class StepResult(NamedTuple):
    next_token_ids: list[int]  # one per sampling request, in batch order
    logprobs: list[LogprobEntry | None]  # parallel to next_token_ids
    input_logprobs: dict[int, tuple[list[tuple[float | None, int]], list[list[tuple[float, int]]]]]


class Pending(NamedTuple):
    """A launched step whose sampled tokens may still be on their way to the host."""

    reqs: list[Req]  # the sampling requests, in order
    next_ids: torch.Tensor | None  # [len(reqs)] on the device: the next step may read them without a sync
    host_ids: torch.Tensor | None  # their host copy, valid once ``event`` completes
    event: Any
    sample: SampleOutput | None
    input_lps: dict[int, tuple[list[tuple[float | None, int]], list[list[tuple[float, int]]]]]
    logits: torch.Tensor | None = None  # set while sampling is deferred (launch(defer_sampling=True))
    steps: int = 1  # a decode run: host_ids holds [steps, len(reqs)] tokens, step-major


def _pairs(values: list[float], ids: list[int]) -> list[tuple[float, int]]:
    return [(float(v), int(i)) for v, i in zip(values, ids)]


def finish_embedding(pooled: torch.Tensor, pooling: str, num_tokens: int) -> list[float]:
    """The pooled hidden state (a mean where ``pooling`` says so), L2-normalized, as floats for the reply."""
    vec = pooled / num_tokens if pooling == "mean" else pooled
    return torch.nn.functional.normalize(vec.float(), dim=0).tolist()


class StepExecutor:
    """Runs a ScheduleBatch: ``launch`` enqueues forward + sampling, ``resolve`` waits for the tokens.

    NOTE: between launch and resolve the host may prepare (and launch) the next decode step, which reads this
    step's tokens from ``Pending.next_ids`` on the device: that is the whole of overlap scheduling.
    """

    def __init__(self, runner: ModelRunner, features: Sequence[SchedulerFeature] = ()) -> None:
        self.runner = runner
        self.features = tuple(features)
        self.sampler = runner.sampler
        self.platform = runner.platform
        self.pinned = bool(runner.platform.capabilities.pinned_memory)

    def execute(self, batch: ScheduleBatch) -> StepResult:
        return self.resolve(self.launch(batch))

    @torch.inference_mode()
    def launch(
        self, batch: ScheduleBatch, input_ids: torch.Tensor | None = None, step_offset: int = 0,
        defer_sampling: bool = False,
    ) -> Pending:
        """``input_ids`` (device) replaces the batch's own for a decode step chained onto an unresolved one;
        ``step_offset`` counts the tokens sampled but not yet appended to each request (for per-step seeds).
        With ``defer_sampling`` only the forward is enqueued: ``finish_sampling`` samples once the host knows
        every earlier token (grammar masks, penalties, min_new_tokens need them)."""
        if batch.steps > 1:
            assert not defer_sampling, "a decode run never needs host tokens between its steps"
            return self._launch_run(batch, input_ids, step_offset)
        runner = self.runner
        fb = build_forward_batch(batch, runner, input_ids)
        for f in self.features:
            f.before_forward(batch, fb)
        hidden = runner.forward(fb)
        for f in self.features:
            f.after_forward(batch, fb, hidden)
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
        if not batch.mode.is_decode:
            self._pool(batch, hidden)
        reqs = [batch.reqs[i] for i in rows]
        if not rows:
            return Pending([], None, None, None, None, input_lps)
        if batch.mode.is_decode and len(last) == hidden.shape[0]:
            selected = hidden
        else:
            index = to_device(torch.tensor(last, dtype=torch.int64), hidden.device, self.pinned)
            selected = hidden.index_select(0, index)
        logits = runner.compute_logits(selected)
        pending = Pending(reqs, None, None, None, None, input_lps, logits)
        return pending if defer_sampling else self.finish_sampling(pending, step_offset)

    def _launch_run(self, batch: ScheduleBatch, input_ids: torch.Tensor | None, step_offset: int) -> Pending:
        """A decode run: ``batch.steps`` forwards back to back, each fed the tokens the one before it sampled on the
        device; one copy home at the end. (``DecodeRuns`` admits only rows whose sampling needs no host tokens.)"""
        runner, reqs = self.runner, batch.reqs
        ids = input_ids
        sampled: list[torch.Tensor] = []
        for j, fb in enumerate(build_decode_run(batch, runner, input_ids)):
            if j:
                fb.input_ids = ids  # type: ignore[assignment]
            for f in self.features:
                f.before_forward(batch, fb)
            hidden = runner.forward(fb)
            for f in self.features:
                f.after_forward(batch, fb, hidden)
            logits = runner.compute_logits(hidden)
            ids = self._sample(reqs, logits, step_offset + j, want_lp=False).next_token_ids
            sampled.append(ids)
        assert ids is not None
        host, event = self._copy_home(torch.stack(sampled))
        return Pending(reqs, ids, host, event, None, {}, steps=batch.steps)

    def _sample(self, reqs: list[Req], logits: torch.Tensor, step_offset: int, want_lp: bool) -> SampleOutput:
        runner = self.runner
        seeds = None
        if step_offset:
            seeds = [
                step_seed(r.sampling_params.seed, len(r.output_ids) + step_offset)
                if r.sampling_params.seed is not None else None
                for r in reqs
            ]
        info = SamplingBatchInfo.build(
            [r.sampling_params for r in reqs], runner.vocab_size, logits.device,
            output_ids=[r.output_ids for r in reqs], prompt_ids=[r.origin_input_ids for r in reqs],
            eos_ids=[r.eos_ids for r in reqs], step_seeds=seeds, pinned=self.pinned,
        )
        mask = self._feature_mask(reqs, logits.device)
        if mask is not None:
            # NOTE: a mask needs every earlier token accepted: such steps are sampled with step_offset 0 only.
            assert step_offset == 0, "a masked batch cannot sample before the previous step resolved"
            info = dataclasses.replace(info, vocab_mask=mask)
        return self.sampler(
            logits, info, return_logprob=want_lp,
            top_logprobs_nums=[r.top_logprobs_num for r in reqs] if want_lp else None,
        )

    def _copy_home(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Starts copying ``ids`` to the host; the event marks when the copy is complete."""
        host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=self.pinned)
        host.copy_(ids, non_blocking=self.pinned)
        event = self.platform.new_event()
        if event is not None:
            event.record()
        return host, event

    @torch.inference_mode()
    def finish_sampling(self, p: Pending, step_offset: int = 0) -> Pending:
        """Samples a launched forward's logits and starts copying the tokens home."""
        assert p.logits is not None, "this step was already sampled"
        want_lp = False
        for r in p.reqs:  # NOTE: a loop, not any(<generator>): it runs per row every step
            if r.return_logprob:
                want_lp = True
                break
        out = self._sample(p.reqs, p.logits, step_offset, want_lp)
        host, event = self._copy_home(out.next_token_ids)
        return Pending(p.reqs, out.next_token_ids, host, event, out, p.input_lps)

    def _feature_mask(self, reqs: list[Req], device: torch.device) -> torch.Tensor | None:
        """The union of the features' forbidden-token masks for these rows (grammar constraints, ...)."""
        mask: torch.Tensor | None = None
        for f in self.features:
            m = f.logit_mask(reqs, self.runner.vocab_size, device, self.pinned)
            if m is not None:
                mask = m if mask is None else mask | m
        return mask

    def resolve(self, p: Pending) -> StepResult:
        if p.host_ids is None:
            return StepResult([], [], p.input_lps)
        if p.event is not None:
            p.event.synchronize()
        next_ids = p.host_ids.reshape(-1).tolist()  # a run: step-major
        lps: list[LogprobEntry | None] = [None] * len(next_ids)
        out = p.sample
        if out is not None and out.next_token_logprobs is not None:
            chosen = out.next_token_logprobs.tolist()
            for j, r in enumerate(p.reqs):
                if r.return_logprob:
                    top = out.top_logprobs[j] if out.top_logprobs is not None else ([], [])
                    lps[j] = ((float(chosen[j]), next_ids[j]), _pairs(top[0], top[1]))
        return StepResult(next_ids, lps, p.input_lps)

    @staticmethod
    def _pool(batch: ScheduleBatch, hidden: torch.Tensor) -> None:
        """Embedding requests: adds this chunk's hidden states to the request's pool (a sum, or the last row).

        NOTE: kept on the device (no sync here); ``finish_embedding`` normalizes once the prompt is whole.
        """
        offset = 0
        for i, r in enumerate(batch.reqs):
            e = batch.extend_lens[i]
            if r.pooling == "mean":
                part = hidden[offset:offset + e].float().sum(0)
                r.pooled = part if r.pooled is None else r.pooled + part
            elif r.pooling == "last" and batch.completes_prefill(i):
                r.pooled = hidden[offset + e - 1].float()
            offset += e

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
