"""What a resolved step changes: tokens appended, stop conditions, features told, requests finished or moved on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from sgl.core.ipc import FinishReason
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.feature import SchedulerFeature
from sgl.core.scheduler.req import Req, ReqStage
from sgl.core.scheduler.state import SchedulerState
from sgl.core.scheduler.step import StepResult, finish_embedding

if TYPE_CHECKING:
    from sgl.core.speculative.verify import VerifyResult

Detokenize = Callable[[Sequence[int]], str]


class ResultProcessor:
    """Applies each step's sampled tokens to its requests, on the state it is given."""

    def __init__(self, state: SchedulerState, features: Sequence[SchedulerFeature], detokenize: Detokenize) -> None:
        self.s = state
        self.features = tuple(features)
        self.detokenize = detokenize
        self._splicing: list[Req] = []  # requests a feature will splice tokens into, once no step is in flight

    def process_decode(self, batch: ScheduleBatch, result: StepResult) -> None:
        """A decode step, or a run of ``batch.steps`` (tokens step-major): each request takes its tokens in order
        until it finishes; the rest are dropped, and their KV slots go back when the request is released."""
        s, k, b = self.s, batch.steps, len(batch.reqs)
        s.counters.decode_steps += k
        s.counters.decode_rows += b * k
        ids, lps = result.next_token_ids, result.logprobs
        append = self.append_token
        # NOTE: this loop runs once per request per decode step (hundreds of rows at large batch): it reads
        # ``finished_reason`` rather than the ``finished`` property and binds ``append_token`` once.
        for i, r in enumerate(batch.reqs):
            r.kv_len += k
            r.inflight -= k
            if r.finished_reason is not None:  # finished while this step was in flight (overlap): tokens dropped
                if r.release_deferred:
                    s.release(r)
                continue
            for j in range(k):
                # a splice found while this step was in flight drops the rest
                if r.finished_reason is not None or r.splice_pending:
                    break
                append(r, ids[j * b + i], lps[j * b + i])
        s.running = [r for r in s.running if r.finished_reason is None]
        self.take_splices()
        s.token_ratio.decay()

    def process_verify(self, batch: ScheduleBatch, result: VerifyResult) -> None:
        """A verified decode step: each request appends its accepted tokens one by one, exactly as that many decode
        steps would (stop conditions, features, logprobs per token), and frees the KV slots of what it did not keep.

        NOTE: appended token j was the input of verified position j + 1, so after e tokens the request keeps the
        KV of positions 0 .. e - 1 (its last token's and the e - 1 accepted drafts'); slots past those are freed,
        except those on the page of the last kept slot (the request's partial page owns them)."""
        s = self.s
        s.counters.decode_steps += 1
        s.counters.decode_rows += len(batch.reqs)
        rejected: list[int] = []
        for r, tokens, lps, slots in zip(batch.reqs, result.tokens, result.logprobs, result.slots):
            kept = 0
            for tok, lp in zip(tokens, lps):
                if r.finished or r.splice_pending:
                    break
                kept += 1
                r.kv_len += 1
                self.append_token(r, tok, lp)  # NOTE: a finish here defers the release: the step is still in flight
            if kept == 0:  # ended before this step resolved: its last token's KV is computed all the same
                kept = 1
                r.kv_len += 1
            rejected += self._rejected(slots, kept)
            r.last_slot = slots[kept - 1]
            r.inflight -= 1
            if r.release_deferred:
                s.release(r)
        self._free_rejected(rejected)
        s.running = [r for r in s.running if not r.finished]
        self.take_splices()
        s.token_ratio.decay()

    def _rejected(self, slots: list[int], kept: int) -> list[int]:
        """The slots of a verified request's rejected drafts that it frees: those past its ``kept`` first, except
        those on the page of the last kept slot (the request's partial page owns them)."""
        if kept == len(slots):
            return []
        page = self.s.page_size
        if page == 1:
            return slots[kept:]
        last_page = slots[kept - 1] // page
        return [x for x in slots[kept:] if x // page != last_page]

    def _free_rejected(self, rejected: list[int]) -> None:
        # NOTE: one free for the whole verified batch (each free costs a dozen small host ops, whatever its size)
        if rejected:
            self.s.allocator.free(torch.tensor(rejected, dtype=torch.int64))

    def process_extend(self, batch: ScheduleBatch, result: StepResult) -> None:
        s = self.s
        sampled = iter(zip(result.next_token_ids, result.logprobs))
        for i, r in enumerate(batch.reqs):
            r.kv_len += batch.extend_lens[i]
            if r.stage is ReqStage.DECODE:  # a running request decoding inside a MIXED batch
                tok, lp = next(sampled)
                self.append_token(r, tok, lp)
                continue
            if i in result.input_logprobs:
                lps, tops = result.input_logprobs[i]
                r.input_logprobs = (r.input_logprobs or []) + lps
                r.input_top_logprobs = (r.input_top_logprobs or []) + tops
            s.touched[r.rid] = r
            if not batch.completes_prefill(i):
                s.cache.cache_unfinished_req(r)
                continue
            r.input_logprobs_done = True
            if r.pooling is not None:
                r.embedding = finish_embedding(r.pooled, r.pooling, len(r.origin_input_ids))
            if s.chunked is r:
                s.chunked = None
            s.leave_group(r)
            if r.sampling_params.max_new_tokens == 0:
                r.finished_reason = FinishReason("length")
                s.finish(r)
                continue
            tok, lp = next(sampled)
            self.append_token(r, tok, lp)
            if r.finished:
                continue
            r.stage = ReqStage.DECODE
            if s.limits.share_prefixes:
                s.cache.cache_unfinished_req(r)  # share the prompt with requests that arrive while it decodes
            s.running.append(r)
        self.take_splices()

    def append_token(self, r: Req, token: int, logprob: Any) -> None:
        r.output_ids.append(token)
        features = self.features
        for f in features:
            reason = f.on_token(r, token)
            if reason is not None and r.finished_reason is None:
                r.finished_reason = reason
        s = self.s
        s.counters.generated_tokens += 1
        if logprob is not None:
            r.pending_logprobs.append(logprob[0])
            r.pending_top_logprobs.append(logprob[1])
        r.check_finished(self.detokenize)
        s.touched[r.rid] = r
        if r.finished_reason is not None:
            s.finish(r)
            return
        for f in features:  # NOTE: a loop, not any(<generator>): this runs per request per decode step
            if f.wants_splice(r):
                r.splice_pending = True
                self._splicing.append(r)
                return

    def take_splices(self) -> None:
        """Appends the spliced tokens of each request with no step in flight and sends it back through prefill."""
        if not self._splicing:
            return
        s = self.s
        ready = [r for r in self._splicing if not r.inflight or r.finished]
        self._splicing = [r for r in self._splicing if r.inflight and not r.finished]
        for r in ready:
            r.splice_pending = False
            if r.finished or r.stage is not ReqStage.DECODE:  # ended, or retracted meanwhile: it samples on
                continue
            tokens = [t for f in self.features for t in f.take_splice(r)]
            if not tokens:
                continue
            for token in tokens:  # accepted by the feature already; the stop conditions still apply
                r.output_ids.append(token)
                s.counters.generated_tokens += 1
                r.check_finished(self.detokenize)
                if r.finished:
                    break
            s.touched[r.rid] = r
            if r.finished:
                s.finish(r)
                continue
            s.running.remove(r)
            s.requeue(r)  # NOTE: its computed KV goes to the radix cache, where the re-admission finds it
