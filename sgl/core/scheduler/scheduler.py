"""The scheduler: continuous batching over the radix cache and the paged KV pool (DESIGN section 6)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sgl.core.cache.base import PrefixCache
from sgl.core.cache.chunk_cache import ChunkCache
from sgl.core.cache.radix_cache import RadixCache
from sgl.core.config import ServerArgs
from sgl.core.grammar.base import GrammarVocab, grammar_key
from sgl.core.grammar.manager import GrammarManager
from sgl.core.ipc import FinishReason, GenerateReq, ReqOutput
from sgl.core.memory.allocator import TokenAllocator
from sgl.core.runner.forward_batch import ForwardMode
from sgl.core.runner.model_runner import ModelRunner
from sgl.core.scheduler.batch import ScheduleBatch
from sgl.core.scheduler.jump_forward import Encode, JumpForward
from sgl.core.scheduler.new_token_ratio import NewTokenRatio
from sgl.core.scheduler.overlap import OverlapLoop
from sgl.core.scheduler.prefill import PrefillBuilder
from sgl.core.scheduler.req import Req, ReqStage
from sgl.core.scheduler.step import StepExecutor, StepResult

logger = logging.getLogger(__name__)

GRAMMAR_WAIT_S = 0.005  # grammar: how long an otherwise idle step sleeps on pending compiles


class Scheduler:
    """Owns every request between admission and release. It never raises on a request's behalf.

    NOTE: a request's KV leaves through ``_release`` only (finish, abort, retract alike); after every step
    free + evictable + locked + request-owned == pool size (checked when ``debug_invariants`` is on).
    """

    def __init__(
        self, args: ServerArgs, runner: ModelRunner, detokenize: Callable[[Sequence[int]], str], eos_ids: set[int],
        encode: Encode | None = None,
    ) -> None:
        self.args = args
        self.runner = runner
        self.detokenize = detokenize
        self.eos_ids = eos_ids
        self.page_size = args.page_size
        self.allocator = TokenAllocator(runner.max_total_tokens, args.page_size, "cpu")
        cache_cls = ChunkCache if args.disable_radix_cache else RadixCache
        self.cache: PrefixCache = cache_cls(runner.req_to_token_pool, self.allocator, page_size=args.page_size)
        self.req_pool = runner.req_to_token_pool
        self.max_running = runner.max_running_requests
        self.chunk_size = args.chunked_prefill_size if args.enable_chunked_prefill else None
        self.prefill_token_budget = min(args.max_prefill_tokens, self.chunk_size or args.max_prefill_tokens)
        # grammar: compiles run off this thread; nothing is imported until the first constrained request
        vocab = GrammarVocab(args.tokenizer_path or runner.model_config.path or "", runner.vocab_size,
                             tuple(sorted(eos_ids)))
        self.grammars = GrammarManager(args.grammar_backend, vocab, args.grammar_compile_timeout)
        self.executor = StepExecutor(runner, self.grammars)
        self.jump = self._jump_forward(args, encode)
        self._jumping: list[Req] = []  # grammar: requests with forced text found, waiting for no step in flight
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked: Req | None = None
        self.reqs: dict[str, Req] = {}
        self.group_leaders: dict[str, str] = {}  # group -> rid of the sibling whose prefill goes first
        self.token_ratio = NewTokenRatio(args.schedule_conservativeness)  # admission's reserve for future decodes
        self._arrivals = 0
        self._touched: dict[str, Req] = {}
        self.stats = {"prompt_tokens": 0, "cached_tokens": 0, "generated_tokens": 0, "retractions": 0, "steps": 0,
                      "overlapped_steps": 0, "mixed_steps": 0, "decode_steps": 0, "decode_rows": 0, "jumps": 0, "jump_tokens": 0,
                      "prefill_ms": 0, "decode_ms": 0}
        use_overlap = args.force_overlap_schedule or (
            runner.platform.capabilities.overlap_schedule and not args.disable_overlap_schedule
        )
        self.overlap = OverlapLoop(self) if use_overlap else None
        self.prefill = PrefillBuilder(self)

    # intake -----------------------------------------------------------------------------------------------------
    def add_request(self, msg: GenerateReq) -> None:
        if msg.rid in self.reqs:
            self._emit_finished_unscheduled(msg, FinishReason("abort", message=f"duplicate request id {msg.rid!r}",
                                                              status_code=400))
            return
        req = Req(msg, self.eos_ids, self._arrivals)
        self._arrivals += 1
        key = grammar_key(msg.sampling_params)  # grammar: start compiling; prefill skips it until ready
        if key is not None:
            req.grammar = self.grammars.start(req, key)
        self.reqs[req.rid] = req
        if req.group is not None and req.group not in self.group_leaders:
            self.group_leaders[req.group] = req.rid
        self.waiting.append(req)

    def _emit_finished_unscheduled(self, msg: GenerateReq, reason: FinishReason) -> None:
        req = Req(msg, self.eos_ids, -1)
        req.finished_reason = reason
        self._touched[f"\0{msg.rid}"] = req

    def abort(self, rid: str) -> None:
        req = self.reqs.get(rid)
        if req is None or req.finished:
            return
        req.finished_reason = FinishReason("abort", message="request aborted")
        self._finish(req)

    @property
    def is_idle(self) -> bool:
        in_flight = self.overlap is not None and self.overlap.inflight is not None
        return not self.waiting and not self.running and self.chunked is None and not in_flight

    # the step ---------------------------------------------------------------------------------------------------
    def step(self) -> list[ReqOutput]:
        """Runs at most one forward (two overlapped, in overlap mode) and returns what changed per request."""
        if self.grammars.has_pending:
            self._settle_grammars()
        t0, steps, decodes = time.perf_counter(), self.stats["steps"], self.stats["decode_steps"]
        if self.overlap is not None:
            self.overlap.step()
        else:
            batch = self.prefill.schedule()
            if batch is None and self.running:
                batch = self._schedule_decode()
            if batch is not None:
                self._run(batch)
        # NOTE: wall time by the kind of step that finished in it (overlap: the decode it resolved), so a run can
        # tell time lost to prefill from time in decode
        if self.stats["decode_steps"] != decodes:
            self.stats["decode_ms"] += round((time.perf_counter() - t0) * 1e3)
        elif self.stats["steps"] != steps:
            self.stats["prefill_ms"] += round((time.perf_counter() - t0) * 1e3)
        if self.args.debug_invariants:
            self.check_invariant()
        return self._collect_outputs()

    def _run(self, batch: ScheduleBatch) -> None:
        self.stats["steps"] += 1
        if batch.mode.is_decode:
            for r in batch.reqs:
                r.inflight += 1
            self.process_decode(batch, self.executor.execute(batch))
        else:
            self._process_extend(batch, self.executor.execute(batch))

    def process_decode(self, batch: ScheduleBatch, result: StepResult) -> None:
        self.stats["decode_steps"] += 1
        self.stats["decode_rows"] += len(batch.reqs)
        for r, tok, lp in zip(batch.reqs, result.next_token_ids, result.logprobs):
            r.kv_len += 1
            r.inflight -= 1
            if r.finished:  # finished while this step was in flight (overlap): its token is dropped
                if r.release_deferred:
                    self._release(r)
                continue
            if r.jump_text:  # grammar: a forced text was found while this step was in flight: its token is dropped
                continue
            self._append_token(r, tok, lp)
        self.running = [r for r in self.running if not r.finished]
        self._take_jumps()
        self.token_ratio.decay()

    def _process_extend(self, batch: ScheduleBatch, result: StepResult) -> None:
        sampled = iter(zip(result.next_token_ids, result.logprobs))
        for i, r in enumerate(batch.reqs):
            r.kv_len += batch.extend_lens[i]
            if r.stage is ReqStage.DECODE:  # a running request decoding inside a MIXED batch
                tok, lp = next(sampled)
                self._append_token(r, tok, lp)
                continue
            if i in result.input_logprobs:
                lps, tops = result.input_logprobs[i]
                r.input_logprobs = (r.input_logprobs or []) + lps
                r.input_top_logprobs = (r.input_top_logprobs or []) + tops
            self._touched[r.rid] = r
            if not batch.completes_prefill(i):
                self.cache.cache_unfinished_req(r)
                continue
            r.input_logprobs_done = True
            if self.chunked is r:
                self.chunked = None
            if r.group is not None and self.group_leaders.get(r.group) == r.rid:
                del self.group_leaders[r.group]
            if r.sampling_params.max_new_tokens == 0:
                r.finished_reason = FinishReason("length")
                self._finish(r)
                continue
            tok, lp = next(sampled)
            self._append_token(r, tok, lp)
            if r.finished:
                continue
            r.stage = ReqStage.DECODE
            if not self.args.disable_radix_cache:
                self.cache.cache_unfinished_req(r)  # share the prompt with requests that arrive while it decodes
            self.running.append(r)
        self._take_jumps()

    def _settle_grammars(self) -> None:
        """grammar: a failed or timed-out compile finishes its request (400); sleeps briefly if nothing else can run."""
        if not self.running and self.chunked is None and all(
            r.grammar is not None and not r.grammar.ready for r in self.waiting
        ):
            self.grammars.wait(GRAMMAR_WAIT_S)
        for r, reason in self.grammars.poll():
            if not r.finished:
                r.finished_reason = reason
                self._finish(r)

    def _append_token(self, r: Req, token: int, logprob: Any) -> None:
        r.output_ids.append(token)
        if r.grammar is not None:  # grammar: advance; a terminated grammar (or a rejected token) ends the request
            r.finished_reason = r.grammar.advance(token, self.grammars.vocab.stop_token_ids)
        self.stats["generated_tokens"] += 1
        if logprob is not None:
            r.pending_logprobs.append(logprob[0])
            r.pending_top_logprobs.append(logprob[1])
        r.check_finished(self.detokenize)
        self._touched[r.rid] = r
        if r.finished:
            self._finish(r)
        elif self.jump is not None and self.jump.eligible(r):
            r.jump_text = self.jump.forced_text(r)
            if r.jump_text:
                self._jumping.append(r)

    # jump-forward -----------------------------------------------------------------------------------------------
    def _jump_forward(self, args: ServerArgs, encode: Encode | None) -> JumpForward | None:
        # NOTE: a jump re-enters prefill and finds its computed KV in the radix cache; without it, it would recompute
        if args.disable_jump_forward or args.disable_radix_cache or encode is None:
            return None
        return JumpForward(encode)

    def _take_jumps(self) -> None:
        """Appends the forced text of each request with no step in flight and sends it back through prefill."""
        if not self._jumping:
            return
        assert self.jump is not None
        ready = [r for r in self._jumping if not r.inflight or r.finished]
        self._jumping = [r for r in self._jumping if r.inflight and not r.finished]
        for r in ready:
            if r.finished or r.stage is not ReqStage.DECODE:  # ended, or retracted meanwhile: it samples on
                r.jump_text = ""
                continue
            tokens = self.jump.forced_tokens(r, r.jump_text)
            r.jump_text = ""
            if not tokens:
                continue
            self.stats["jumps"] += 1
            self.stats["jump_tokens"] += len(tokens)
            for token in tokens:  # accepted by the matcher already; the stop conditions still apply
                r.output_ids.append(token)
                self.stats["generated_tokens"] += 1
                r.check_finished(self.detokenize)
                if r.finished:
                    break
            self._touched[r.rid] = r
            if r.finished:
                self._finish(r)
                continue
            self.running.remove(r)
            self._release(r)  # NOTE: its computed KV goes to the radix cache, where the re-admission finds it
            r.reset_for_recompute()
            self.waiting.insert(0, r)

    def _last_loc(self, r: Req, length: int) -> int:
        """The slot of token ``length - 1``; kept on the host (``r.last_slot``) so no device read is needed."""
        if self.page_size == 1 or length == 0:
            return -1
        if length == r.kv_len + r.inflight and r.last_slot >= 0:
            return r.last_slot
        return int(self.req_pool.host[r.req_pool_idx, length - 1])

    # decode -----------------------------------------------------------------------------------------------------
    def _schedule_decode(self) -> ScheduleBatch | None:
        while self.running:
            batch = self.decode_batch(self.running, ahead=0)
            if batch is not None:
                return batch
            self._retract_one()
        return None

    def decode_batch(self, reqs: list[Req], ahead: int) -> ScheduleBatch | None:
        """Allocates one slot per request and builds the DECODE batch, or returns None when the pool is full.

        ``ahead`` is 1 when the batch chains onto an unresolved step: each request's KV then already reaches one
        token further than ``kv_len`` says.
        """
        starts = [r.kv_len + ahead for r in reqs]
        last = [self._last_loc(r, n) for r, n in zip(reqs, starts)]
        need = len(reqs) * self.page_size
        if self.allocator.available_size() < need:
            self.cache.evict(need - self.allocator.available_size())
        got = self.allocator.alloc_decode([n + 1 for n in starts], last)
        if got is None:
            return None
        # NOTE: the host mirror here; build_forward_batch writes the device table without a sync.
        rows = torch.tensor([r.req_pool_idx for r in reqs], dtype=torch.int64)
        self.req_pool.write_host(rows, torch.tensor(starts, dtype=torch.int64), got)
        for r, slot in zip(reqs, got.tolist()):
            r.last_slot = slot
        return ScheduleBatch(ForwardMode.DECODE, list(reqs), starts, [1] * len(reqs), got)

    def _retract_one(self) -> None:
        """Sends the youngest running request back to the waiting queue; its KV stays evictable in the cache."""
        victim = max(self.running, key=lambda r: r.arrival)
        self.running.remove(victim)
        if not self.running and not self.waiting and self.chunked is None:
            # NOTE: even alone it cannot get one more slot: the pool is smaller than this request needs.
            victim.finished_reason = FinishReason(
                "abort", message=f"the KV pool ({self.allocator.size} tokens) cannot hold this request", status_code=400
            )
            self._finish(victim)
            return
        self._release(victim)
        victim.reset_for_recompute()
        self.waiting.insert(0, victim)
        self.stats["retractions"] += 1
        self.token_ratio.reset()
        logger.info("KV pool full: retracted %s (%d tokens) for recomputation", victim.rid, victim.seq_len)

    # release ----------------------------------------------------------------------------------------------------
    def _release(self, r: Req) -> None:
        """The one way a request gives back its KV: computed tokens go to the cache, the rest to the allocator."""
        if r.req_pool_idx is None:
            return
        if r.inflight:  # NOTE: a launched step still writes this request's KV; release when it resolves
            r.release_deferred = True
            return
        r.release_deferred = False
        self.cache.cache_finished_req(r)
        self.req_pool.free(r.req_pool_idx)
        r.req_pool_idx = None
        r.prefix_indices = r.prefix_indices[:0]
        r.last_handle = None
        r.kv_len = 0

    def _finish(self, r: Req) -> None:
        if r.finished_reason is not None:
            self.token_ratio.observe_finish(r.finished_reason.type, len(r.output_ids),
                                            r.sampling_params.max_new_tokens, known=r.output_len_known)
        self._release(r)
        r.stage = ReqStage.FINISHED
        if r in self.waiting:
            self.waiting.remove(r)
        if r in self.running:
            self.running.remove(r)
        if self.chunked is r:
            self.chunked = None
        if r.group is not None and self.group_leaders.get(r.group) == r.rid:
            del self.group_leaders[r.group]
        self._touched[r.rid] = r

    # outputs ----------------------------------------------------------------------------------------------------
    def _collect_outputs(self) -> list[ReqOutput]:
        outs: list[ReqOutput] = []
        for r in self._touched.values():
            out = r.take_output()
            if out is not None:
                outs.append(out)
            if r.finished and self.reqs.get(r.rid) is r:
                del self.reqs[r.rid]
        self._touched = {}
        return outs

    # accounting -------------------------------------------------------------------------------------------------
    def owned_slots(self) -> int:
        """Slots held by requests outside the cache (whole pages)."""
        total = 0
        p = self.page_size
        shares = not self.args.disable_radix_cache  # NOTE: without sharing, prefix_indices are the request's own
        for r in self.reqs.values():
            if r.req_pool_idx is not None:
                held = r.kv_len + r.inflight
                total += (-(-held // p)) * p - (int(r.prefix_indices.numel()) if shares else 0)
        return total

    def check_invariant(self) -> None:
        self.cache.check_invariant(extra_owned=self.owned_slots())
        if self.is_idle:
            assert self.cache.protected_size() == 0, f"idle but {self.cache.protected_size()} slots still locked"
            assert self.req_pool.available_size() == self.max_running, "idle but request slots are still held"

    def flush_cache(self) -> bool:
        if not self.is_idle:
            return False
        self.cache.reset()
        return True

    def info(self) -> dict[str, Any]:
        size = self.allocator.size
        free = self.allocator.available_size()
        evictable = self.cache.evictable_size()
        return {
            "max_total_tokens": size, "available_tokens": free, "evictable_tokens": evictable,
            "locked_tokens": self.cache.protected_size(), "request_owned_tokens": self.owned_slots(),
            "token_usage": round((size - free - evictable) / size, 4) if size else 0.0,
            "num_running_reqs": len(self.running) + (1 if self.chunked is not None else 0),
            "num_waiting_reqs": len(self.waiting), "max_running_requests": self.max_running,
            "page_size": self.page_size, **self.stats,
            "new_token_ratio": round(self.token_ratio.value, 4),
            "cache_hit_rate": round(self.stats["cached_tokens"] / max(self.stats["prompt_tokens"], 1), 4),
            "grammar_mask_us_per_token": round(
                1e6 * self.executor.mask_seconds / max(self.executor.masked_tokens, 1), 1),
        }
