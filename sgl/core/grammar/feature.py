"""Grammar-constrained decoding as a scheduler feature (DESIGN 4.5): compile on admit, mask before sampling,
advance the matcher per token, jump forward over forced text."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sgl.core.grammar.base import GrammarKind, GrammarVocab, grammar_key
from sgl.core.grammar.jump_forward import Encode, JumpForward
from sgl.core.grammar.manager import GrammarManager, RequestGrammar
from sgl.core.grammar.strict_json import ControlTokenMask, Decode
from sgl.core.scheduler.feature import SchedulerFeature

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.ipc import FinishReason
    from sgl.core.scheduler.req import Req

GRAMMAR_WAIT_S = 0.005  # how long an otherwise idle step sleeps on pending compiles


@dataclass
class _Constraint:
    """One request's grammar state."""

    grammar: RequestGrammar
    jump_text: str = ""  # forced text found after the last token, spliced in once no step of it is in flight


class GrammarFeature(SchedulerFeature):
    name = "grammar"

    def __init__(
        self, manager: GrammarManager, jump: JumpForward | None, control_tokens: ControlTokenMask | None = None,
    ) -> None:
        self.manager = manager
        self.jump = jump
        self.control_tokens = control_tokens  # NOTE: strict JSON whatever the backend (strict_json.py)
        self.mask_seconds = 0.0  # host time spent on masks (fill + enqueue), per constrained token
        self.masked_tokens = 0
        self.jumps = 0
        self.jump_tokens = 0

    @classmethod
    def from_args(
        cls, args: ServerArgs, vocab: GrammarVocab, encode: Encode | None, decode: Decode | None = None,
    ) -> GrammarFeature:
        """Compiles run off the scheduler thread; nothing is imported until the first constrained request.

        NOTE: a jump re-enters prefill and finds its computed KV in the radix cache; without it, it would recompute.
        """
        manager = GrammarManager(args.grammar_backend, vocab, args.grammar_compile_timeout,
                                 synchronous=args.tp_size > 1)
        use_jump = not (args.disable_jump_forward or args.disable_radix_cache or encode is None)
        control = ControlTokenMask(decode, vocab.vocab_size) if decode is not None else None
        return cls(manager, JumpForward(encode) if use_jump and encode is not None else None, control)

    def _state(self, req: Req) -> _Constraint | None:
        return req.features.get(self.name)  # type: ignore[no-any-return]

    # admission --------------------------------------------------------------------------------------------------
    def admit(self, req: Req) -> FinishReason | None:
        key = grammar_key(req.sampling_params)
        if key is not None:
            req.features[self.name] = _Constraint(self.manager.start(req, key))
            req.feature_may_stop = True  # a terminated grammar ends the request early
        return None

    def ready(self, req: Req) -> bool:
        st = self._state(req)
        return st is None or st.grammar.ready

    def settle(self, idle: bool) -> list[tuple[Req, FinishReason]]:
        """A failed or timed-out compile finishes its request (400); sleeps briefly if nothing else can run."""
        if not self.manager.has_pending:
            return []
        if idle:
            self.manager.wait(GRAMMAR_WAIT_S)
        return [(r, reason) for r, reason in self.manager.poll() if not r.finished]

    # sampling ---------------------------------------------------------------------------------------------------
    def needs_host_tokens(self, req: Req) -> bool:
        return self.name in req.features

    def logit_mask(
        self, reqs: Sequence[Req], vocab_size: int, device: torch.device, pinned: bool
    ) -> torch.Tensor | None:
        # NOTE: a request that already finished (it rides along in a chained step whose token is dropped) is left
        # unconstrained
        grammars = [st.grammar if (st := self._state(r)) is not None and not r.finished else None for r in reqs]
        if all(g is None for g in grammars):
            return None
        t0 = time.perf_counter()
        mask = self.manager.vocab_mask(grammars, vocab_size, device, pinned)
        if self.control_tokens is not None:
            json_rows = [i for i, g in enumerate(grammars) if g is not None and g.key.kind is GrammarKind.JSON]
            mask = self.control_tokens.apply(mask, json_rows)
        self.mask_seconds += time.perf_counter() - t0
        self.masked_tokens += sum(g is not None for g in grammars)
        return mask

    def on_token(self, req: Req, token: int) -> FinishReason | None:
        st = self._state(req)
        if st is None:
            return None
        reason = st.grammar.advance(token, self.manager.vocab.stop_token_ids)
        if reason is not None:
            return reason
        # NOTE: logprobs are reported per sampled token, so a request that asks for them decodes every token
        if self.jump is not None and not req.return_logprob:
            st.jump_text = self.jump.forced_text(st.grammar)
        return None

    # jump-forward -----------------------------------------------------------------------------------------------
    def wants_splice(self, req: Req) -> bool:
        st = self._state(req)
        return st is not None and bool(st.jump_text)

    def take_splice(self, req: Req) -> list[int]:
        st = self._state(req)
        if st is None or self.jump is None or not st.jump_text:
            return []
        text, st.jump_text = st.jump_text, ""
        budget = req.sampling_params.max_new_tokens - len(req.output_ids) - 1
        tokens = self.jump.forced_tokens(st.grammar, text, budget)
        if tokens:
            self.jumps += 1
            self.jump_tokens += len(tokens)
        return tokens

    def resync(self, req: Req) -> None:
        st = self._state(req)
        if st is not None:  # the matcher must match output_ids, which recomputation keeps
            st.grammar.sync(req.output_ids)

    def info(self) -> dict[str, Any]:
        return {"jumps": self.jumps, "jump_tokens": self.jump_tokens,
                "grammar_mask_us_per_token": round(1e6 * self.mask_seconds / max(self.masked_tokens, 1), 1)}

    def close(self) -> None:
        self.manager.close()
