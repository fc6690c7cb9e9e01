"""Strict JSON whichever backend runs: a JSON-schema output never holds a raw control character.

RFC 8259 forbids U+0000..U+001F unescaped inside strings, and strict parsers (Python's ``json.loads``) reject
them. A backend's string rule may admit them (some admit all but the quote, backslash and newlines); core does
not rely on it. JSON constraints compile compact (no optional whitespace), so a valid output has no control
character anywhere: forbidding every token whose text holds one removes only invalid continuations, and the
grammar always keeps a valid one (an escape, a printable character, a closing quote).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Decode = Callable[[Sequence[int]], str]


def has_control_char(text: str) -> bool:
    return any(ord(c) < 0x20 for c in text)


class ControlTokenMask:
    """Which token ids decode to text holding a control character; computed once, on first use, per device."""

    def __init__(self, decode: Decode, vocab_size: int) -> None:
        self._decode = decode
        self._vocab_size = vocab_size
        self._host: torch.Tensor | None = None
        self._by_device: dict[str, torch.Tensor] = {}

    def host(self) -> torch.Tensor:
        if self._host is None:
            self._host = torch.tensor([self._is_control(i) for i in range(self._vocab_size)], dtype=torch.bool)
        return self._host

    def _is_control(self, token_id: int) -> bool:
        try:
            return has_control_char(self._decode([token_id]))
        except (ValueError, OverflowError, IndexError):  # NOTE: a padded logits column has no text
            return False

    def on(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._by_device:
            self._by_device[key] = self.host().to(device)
        return self._by_device[key]

    def apply(self, forbidden: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """``forbidden`` ([B, V] bool) with control-character tokens also forbidden on ``rows``."""
        if not rows:
            return forbidden
        mask = self.on(forbidden.device)
        width = min(forbidden.shape[1], mask.shape[0])
        index = torch.tensor(list(rows), dtype=torch.int64, device=forbidden.device)
        forbidden[index, :width] |= mask[:width]
        return forbidden
