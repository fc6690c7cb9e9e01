"""NewTokenRatio: how much of each request's remaining ``max_new_tokens`` admission reserves KV for.

Admission (``PrefillBuilder``, ``PrefillAdder``) reserves through ``reserve``. A request of known length
(``Req.output_len_known``: ``ignore_eos`` and nothing else that can stop it) gets all its remaining tokens, even on a
cold server; the others get ``remaining x ratio``. As in SGLang the ratio decays every decode step and jumps back on
each retraction. Tuned for chat traffic that stops early, that decay over-admits requests that run to
``max_new_tokens``, so the ratio also never goes below the mean fraction of ``max_new_tokens`` that recently finished
requests of uncertain length used. Known-length finishes teach it nothing: an ``ignore_eos`` benchmark or warm-up
must not make a chat workload's admission conservative.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from sgl.core.scheduler.req import Req

INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = 0.001
OUTPUT_FRACTION_WINDOW = 256  # finished requests the learned floor averages over


class NewTokenRatio:
    """The admission ratio: SGLang's decaying estimate, floored by the output lengths finished requests reached.

    ``value == max(decayed, floor)``, where ``decayed`` starts at ``INIT_NEW_TOKEN_RATIO x conservativeness``, loses
    ``NEW_TOKEN_RATIO_DECAY`` per decode step down to ``MIN_NEW_TOKEN_RATIO`` and returns to its start on each
    retraction, and ``floor`` is the mean of ``len(output_ids) / max_new_tokens`` over the last ``window`` requests
    of uncertain length that finished by stop or length, clamped to ``[MIN_NEW_TOKEN_RATIO, 1]`` and scaled by
    ``conservativeness`` like the start is. Until such a request has finished there is no floor and ``value`` is
    exactly the old decaying ratio.

    A window rather than an EMA: a plain mean of the last N finishes has no smoothing constant to tune and no bias
    from a made-up starting value, it forgets a previous workload after exactly N finishes whatever their timing, and
    it is the figure an operator can check against the requests' own lengths. It holds ``window`` floats; its mean
    is recomputed on each finish (not each step), so there is no drift from a running sum. ``window=0`` turns the
    learning off (the old behaviour).
    """

    def __init__(self, conservativeness: float, window: int = OUTPUT_FRACTION_WINDOW) -> None:
        self.conservativeness = conservativeness
        self.initial = INIT_NEW_TOKEN_RATIO * conservativeness
        self.decayed = self.initial
        self._fractions: deque[float] = deque(maxlen=max(window, 0))
        self._floor: float | None = None

    @property
    def value(self) -> float:
        return self.decayed if self._floor is None else max(self.decayed, self._floor)

    @property
    def floor(self) -> float | None:
        """The learned lower bound of ``value``, or None while no request has finished (or learning is off)."""
        return self._floor

    @property
    def mean_fraction(self) -> float | None:
        """The mean of ``len(output_ids) / max_new_tokens`` over the window, unclamped and unscaled."""
        return sum(self._fractions) / len(self._fractions) if self._fractions else None

    def reserve(self, reqs: Iterable[Req]) -> int:
        """The KV slots admission keeps for these requests' future decodes: all remaining tokens of each request of
        known length (whatever ``value`` is), ``value`` x the remaining tokens of the others (rounded down once)."""
        known = uncertain = 0
        for r in reqs:
            if r.output_len_known:
                known += r.remaining_new_tokens
            else:
                uncertain += r.remaining_new_tokens
        return known + int(uncertain * self.value)

    def observe_finish(self, reason: str, output_len: int, max_new_tokens: int, *, known: bool = False) -> None:
        """Counts a finished request. Aborts say nothing about how long a request would have run, a request with
        ``max_new_tokens == 0`` reserves nothing, and one of known length (``known``) was never estimated: none of
        them is counted."""
        if known or reason not in ("stop", "length") or max_new_tokens <= 0 or self._fractions.maxlen == 0:
            return
        self._fractions.append(min(output_len / max_new_tokens, 1.0))
        clamped = min(max(cast(float, self.mean_fraction), MIN_NEW_TOKEN_RATIO), 1.0)
        self._floor = max(clamped * self.conservativeness, MIN_NEW_TOKEN_RATIO)

    def decay(self) -> None:
        """One decode step ran."""
        self.decayed = max(MIN_NEW_TOKEN_RATIO, self.decayed - NEW_TOKEN_RATIO_DECAY)

    def reset(self) -> None:
        """A request was retracted: the estimate was too low; ``value`` returns to ``max(initial, floor)``."""
        self.decayed = self.initial
