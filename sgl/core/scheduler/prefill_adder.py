"""PrefillAdder: decides how many new tokens of each waiting request fit into one prefill step."""

from __future__ import annotations

import enum
from typing import NamedTuple


class Stop(enum.Enum):
    NONE = "none"
    TOKEN_BUDGET = "token budget"
    KV_BUDGET = "kv budget"


class AddResult(NamedTuple):
    extend_len: int  # 0: not added
    chunked: bool
    stop: Stop


class PrefillAdder:
    """Tracks the step's token budget and the KV budget (free + evictable slots, less a reserve for decodes).

    NOTE: a request is admitted only if its new tokens and an estimate of its future decode tokens fit, so that
    running requests rarely need retraction; at most one request per step is chunked.
    """

    def __init__(self, token_budget: int, kv_budget: int, chunk_size: int | None, idle: bool = False) -> None:
        self.idle = idle  # nothing runs: the first request is admitted on its new tokens alone, or it never could
        self.rem_tokens = token_budget
        self.rem_kv = kv_budget
        self.chunk_size = chunk_size
        self.chunked = False
        self.added = 0

    def add(self, extend_len: int, future: int, page_size: int) -> AddResult:
        """``future``: the KV slots reserved for the request's decodes (``NewTokenRatio.reserve``)."""
        # NOTE: the lone request's future is not required to fit, but it is still reserved: the requests admitted
        # after it in the same step must leave room for its decodes, or they retract one another at once
        lone = self.idle and self.added == 0
        if extend_len <= self.rem_tokens:
            need = extend_len + future + page_size
            if (extend_len + page_size if lone else need) > self.rem_kv:
                return AddResult(0, False, Stop.KV_BUDGET)
            self.rem_tokens -= extend_len
            self.rem_kv -= need
            self.added += 1
            return AddResult(extend_len, False, Stop.NONE)
        if self.chunk_size is None or self.chunked or self.rem_tokens <= 0:
            # NOTE: without chunking a prompt larger than the budget still runs, alone, so it cannot starve.
            if self.chunk_size is None and self.added == 0 and extend_len + (0 if lone else future) <= self.rem_kv:
                self.rem_tokens = 0
                self.rem_kv -= extend_len + future
                self.added += 1
                return AddResult(extend_len, False, Stop.NONE)
            return AddResult(0, False, Stop.TOKEN_BUDGET)
        take = (self.rem_tokens // page_size) * page_size if page_size > 1 else self.rem_tokens
        if take <= 0:
            return AddResult(0, False, Stop.TOKEN_BUDGET)
        if take + page_size > self.rem_kv:
            return AddResult(0, False, Stop.KV_BUDGET)
        self.chunked = True
        self.rem_tokens -= take
        self.rem_kv -= take + page_size
        self.added += 1
        return AddResult(take, True, Stop.NONE)
