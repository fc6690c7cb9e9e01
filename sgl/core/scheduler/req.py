"""Req: one request's scheduling state, from waiting to finished."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import torch

from sgl.core.ipc import FinishReason, GenerateReq, ReqOutput, TokenDelta
from sgl.core.sampling.params import CONSTRAINT_FIELDS

if TYPE_CHECKING:
    from sgl.core.sampling.params import SamplingParams

_EMPTY = torch.empty(0, dtype=torch.int64)


class ReqStage(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"  # scheduled; some prompt tokens still lack KV (a chunked prefill in progress)
    DECODE = "decode"
    FINISHED = "finished"


class Req:
    """Everything the scheduler tracks for one request.

    NOTE: ``kv_len`` tokens of ``all_ids()`` have KV at ``req_to_token[req_pool_idx, :kv_len]``; of those, the first
    ``len(prefix_indices)`` belong to the prefix cache (locked through ``last_handle``) and the rest to this request.
    """

    def __init__(self, msg: GenerateReq, eos_ids: set[int], arrival: int) -> None:
        self.rid = msg.rid
        self.origin_input_ids: list[int] = list(msg.input_ids)
        self.sampling_params: SamplingParams = msg.sampling_params
        self.return_logprob = msg.return_logprob
        self.logprob_start_len = msg.logprob_start_len
        self.top_logprobs_num = msg.top_logprobs_num
        self.group = msg.group
        self.stream = msg.stream
        self.lora_path = msg.lora_path
        # NOTE: the prefix cache shares KV only between requests of one namespace (a LoRA adapter's KV differs from
        # the base model's for the same tokens); 0 is the base model's. A feature sets it on admit.
        self.cache_namespace = 0
        self.arrival = arrival
        self.output_ids: list[int] = []
        sp = msg.sampling_params
        self.eos_ids: set[int] = set() if sp.ignore_eos else set(eos_ids)
        self.stop_token_ids: set[int] = set(sp.stop_token_ids or [])
        self.stop_strs: list[str] = list(sp.stop or [])  # type: ignore[arg-type]
        # scheduling state
        self.stage = ReqStage.WAITING
        self.req_pool_idx: int | None = None
        self.prefix_indices: torch.Tensor = _EMPTY
        self.last_handle: Any = None
        self.kv_len = 0
        self.last_slot = -1  # the KV slot of the newest allocated token (host copy, for paged allocation)
        self.inflight = 0  # launched steps not yet resolved (overlap): its KV reaches kv_len + inflight
        self.release_deferred = False
        self.cached_tokens = 0  # prompt tokens served from the cache, summed over (re)schedulings
        self.finished_reason: FinishReason | None = None
        self.features: dict[str, Any] = {}  # per-request state of the scheduler features, by feature name
        self.feature_may_stop = False  # a feature (a grammar) may end this request before max_new_tokens
        self.splice_pending = False  # a feature splices tokens in once no step of this request is in flight
        self.spec_verify_ct: int | None = None  # decode steps under speculation (SGLang's meta_info name)
        # outputs not yet sent
        self.sent_tokens = 0
        self.sent_counts: tuple[int, int | None] = (0, None)  # (cached_tokens, spec_verify_ct) of the last ReqOutput
        self.pending_logprobs: list[tuple[float, int]] = []
        self.pending_top_logprobs: list[list[tuple[float, int]]] = []
        self.input_logprobs: list[tuple[float | None, int]] | None = None
        self.input_top_logprobs: list[list[tuple[float, int]]] | None = None
        self.input_logprobs_done = not (msg.return_logprob and msg.logprob_start_len >= 0)
        self.pooling = msg.pooling  # an embedding request: "last" | "mean"
        self.pooled: Any = None  # the device sum (mean) or last hidden state so far
        self.embedding: list[float] | None = None

    # tokens -------------------------------------------------------------------------------------------------
    def all_ids(self) -> list[int]:
        return self.origin_input_ids + self.output_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """``all_ids()[start:end]`` without building the whole sequence (a step reads a few tokens near its end)."""
        prompt = self.origin_input_ids
        if start >= len(prompt):
            return self.output_ids[start - len(prompt) : end - len(prompt)]
        return prompt[start:end] + self.output_ids[: max(0, end - len(prompt))]

    @property
    def seq_len(self) -> int:
        return len(self.origin_input_ids) + len(self.output_ids)

    def kv_committed_ids(self) -> list[int]:
        return self.all_ids()[: self.kv_len]

    @property
    def remaining_new_tokens(self) -> int:
        return max(self.sampling_params.max_new_tokens - len(self.output_ids), 0)

    @property
    def output_len_known(self) -> bool:
        """True when the request will generate exactly ``max_new_tokens`` (unless aborted): EOS is ignored and no stop
        string, stop token, grammar or other feature can end it early. ``min_new_tokens`` cannot shorten it, so it does not matter."""
        sp = self.sampling_params
        return (sp.ignore_eos and not self.stop_strs and not self.stop_token_ids and not self.feature_may_stop
                and all(getattr(sp, f) is None for f in CONSTRAINT_FIELDS))

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    def reset_for_recompute(self) -> None:
        """After retraction: the KV is released; the prompt and what was generated are recomputed later."""
        self.stage = ReqStage.WAITING
        self.req_pool_idx = None
        self.prefix_indices = _EMPTY
        self.last_handle = None
        self.kv_len = 0
        self.last_slot = -1

    # stop conditions ----------------------------------------------------------------------------------------
    def check_finished(self, detokenize: Any) -> None:
        """Sets finished_reason after a token was appended. ``detokenize(ids) -> str`` serves stop strings."""
        out = self.output_ids
        if self.finished_reason is not None or not out:
            return
        sp = self.sampling_params
        last = out[-1]
        n_out = len(out)
        if n_out >= sp.min_new_tokens:
            if last in self.stop_token_ids or last in self.eos_ids:
                self.finished_reason = FinishReason("stop", matched=last)
                return
            if self.stop_strs:
                longest = max(len(s) for s in self.stop_strs)
                tail = detokenize(self.output_ids[-(longest + 4) :])
                for s in self.stop_strs:
                    if s in tail:
                        self.finished_reason = FinishReason("stop", matched=s)
                        return
        if n_out >= sp.max_new_tokens:
            self.finished_reason = FinishReason("length", matched=None)

    # outputs ----------------------------------------------------------------------------------------------------
    def take_output(self, stream_interval: int = 1) -> ReqOutput | TokenDelta | None:
        """What changed since the last output, or None when there is nothing to tell yet; a TokenDelta when that is
        only new token ids (a streamed request between its first token and its end), else a whole ReqOutput.

        NOTE: a non-streaming request hears only of its first token (for TTFT) and of its end; a streamed one of its
        first, then of every ``stream_interval`` new tokens, and of its end.
        """
        finished = self.finished_reason is not None
        # NOTE: checked before slicing the new tokens: a non-streaming request is asked every decode step and, but
        # for its first token and its end, has nothing to tell (slicing its whole output each time grew per token)
        if not (self.stream or finished or self.sent_tokens == 0):
            return None
        sent = self.sent_tokens
        if not finished and sent and len(self.output_ids) - sent < stream_interval:
            return None
        new = self.output_ids[sent:]
        if not new and not finished and self.input_logprobs is None:
            return None
        if (sent and not finished and not self.pending_logprobs and not self.pending_top_logprobs
                and self.input_logprobs is None and self.sent_counts == (self.cached_tokens, self.spec_verify_ct)):
            # NOTE: exactly what the ReqOutput below would say, less the fields the receiver already holds
            self.sent_tokens = sent + len(new)
            return self.rid, new
        input_lps = self.input_logprobs if self.input_logprobs_done and self.input_logprobs is not None else None
        out = ReqOutput(
            rid=self.rid, new_token_ids=new, finished=self.finished_reason,
            prompt_tokens=len(self.origin_input_ids), completion_tokens=len(self.output_ids),
            cached_tokens=self.cached_tokens, output_logprobs=self.pending_logprobs,
            output_top_logprobs=self.pending_top_logprobs, input_logprobs=input_lps,
            input_top_logprobs=self.input_top_logprobs if input_lps is not None else None,
            spec_verify_ct=self.spec_verify_ct, embedding=self.embedding if self.finished else None,
        )
        self.sent_tokens = len(self.output_ids)
        self.sent_counts = (self.cached_tokens, self.spec_verify_ct)
        self.pending_logprobs, self.pending_top_logprobs = [], []
        if input_lps is not None:
            self.input_logprobs = None
            self.input_top_logprobs = None
        return out

    def __repr__(self) -> str:
        return f"Req({self.rid!r}, stage={self.stage.value}, prompt={len(self.origin_input_ids)}, out={len(self.output_ids)})"
