"""Jump-forward: text the grammar forces is appended without sampling and computed in one extend step.

When every valid continuation of a constrained request starts with the same text (a JSON key and its quotes, the
comma and quote before the next key), decoding it token by token spends a forward pass per token on a foregone
conclusion. Instead the scheduler tokenizes the forced text, lets the matcher accept it token by token (a token it
rejects ends the jump there, so validity stays the grammar's own), appends what it accepted to the output and sends
the request back through prefill: the radix cache holds everything computed so far, so the next step extends
only the new tokens, and samples the token after them.
"""

from __future__ import annotations

from collections.abc import Callable

from sgl.core.scheduler.req import Req

Encode = Callable[[str], list[int]]


class JumpForward:
    """Decides, per constrained request, which tokens to append without sampling."""

    def __init__(self, encode: Encode) -> None:
        self.encode = encode

    @staticmethod
    def eligible(r: Req) -> bool:
        """Logprobs are reported per sampled token, so a request that asks for them decodes every token."""
        return r.grammar is not None and r.grammar.ready and not r.return_logprob and not r.finished

    def forced_text(self, r: Req) -> str:
        assert r.grammar is not None
        return r.grammar.jump_forward_string()

    def forced_tokens(self, r: Req, text: str) -> list[int]:
        """The tokens of ``text`` the matcher accepts, in order (now accepted), within the request's budget.

        NOTE: one token of the budget is always left to sample, so a jump never ends a request by itself.
        """
        assert r.grammar is not None
        budget = r.sampling_params.max_new_tokens - len(r.output_ids) - 1
        if budget <= 0 or not text:
            return []
        ids = self.encode(text)[:budget]
        taken: list[int] = []
        for token in ids:
            if not r.grammar.accept(token):
                break
            taken.append(token)
        return taken
