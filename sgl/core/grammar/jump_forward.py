"""Jump-forward: text the grammar forces is appended without sampling and computed in one extend step.

When every valid continuation of a constrained request starts with the same text (a JSON key and its quotes, the
comma and quote before the next key), decoding it token by token spends a forward pass per token on a foregone
conclusion. Instead the grammar feature tokenizes the forced text, lets the matcher accept it token by token (a token it
rejects ends the jump there, so validity stays the grammar's own), appends what it accepted to the output and sends
the request back through prefill: the radix cache holds everything computed so far, so the next step extends
only the new tokens, and samples the token after them.
"""

from __future__ import annotations

from collections.abc import Callable

from sgl.core.grammar.manager import RequestGrammar

Encode = Callable[[str], list[int]]


class JumpForward:
    """Decides, per constrained request, which tokens to append without sampling."""

    def __init__(self, encode: Encode) -> None:
        self.encode = encode

    @staticmethod
    def forced_text(rg: RequestGrammar) -> str:
        return rg.jump_forward_string() if rg.ready else ""

    def forced_tokens(self, rg: RequestGrammar, text: str, budget: int) -> list[int]:
        """The tokens of ``text`` the matcher accepts, in order (now accepted), at most ``budget`` of them.

        NOTE: the caller leaves one token of the request's budget to sample, so a jump never ends a request by itself.
        """
        if budget <= 0 or not text:
            return []
        taken: list[int] = []
        for token in self.encode(text)[:budget]:
            if not rg.accept(token):
                break
            taken.append(token)
        return taken
