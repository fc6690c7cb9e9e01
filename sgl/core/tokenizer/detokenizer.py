"""Streaming detokenization: text deltas per step that never split a character and add up to the full decode."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

_REPLACEMENT = "\ufffd"
# Prompt tokens kept as context, so the first output token decodes as a continuation (its leading space kept).
_PROMPT_CONTEXT_TOKENS = 5
# A UTF-8 character spans at most 4 bytes; past this many held tokens a trailing U+FFFD is real, not pending.
_MAX_HELD_TOKENS = 8
# The prefix offset stays put while the window ids[prefix_offset:] is at most this long, so the last call's full
# decode is this call's prefix decode: about one tokenizer decode per token instead of two.
_MAX_WINDOW_TOKENS = 8


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns a growing list of output ids into text deltas.

    Concatenated deltas (after finish()) equal `decode(output_ids)`; with `prompt_ids` they equal the output's text
    as it reads after the prompt (`decode(prompt + output)` minus `decode(prompt)`), which keeps the leading space
    that metaspace tokenizers drop at the start of a decode. Each call decodes only the window from
    `prefix_offset`, so its cost does not grow with the length of the output.
    """

    def __init__(
        self, tokenizer: _Decoder, prompt_ids: Sequence[int] | None = None, skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        context = list(prompt_ids[-_PROMPT_CONTEXT_TOKENS:]) if prompt_ids else []
        # NOTE: ids[prefix_offset:read_offset] is text already emitted (or prompt context); ids[read_offset:]
        # is held back. Both offsets only move forward, and trim() drops ids before prefix_offset.
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._parts: list[str] = []
        # decode(ids[prefix_offset:read_offset]) when known (None: decode it); saves the second decode per call
        self._prefix_text: str | None = None

    @property
    def text(self) -> str:
        """All text emitted so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def held_tokens(self) -> int:
        """Tokens whose text is not yet emitted (an incomplete character, or skipped special tokens)."""
        return len(self._ids) - self._read_offset

    def add(self, token_ids: Sequence[int]) -> str:
        """Appends new output ids; returns the text that became final."""
        self._ids.extend(int(t) for t in token_ids)
        return self._emit(final=False)

    def finish(self) -> str:
        """Emits whatever is held back, even an incomplete character (as U+FFFD)."""
        return self._emit(final=True)

    def _decode(self, start: int, end: int | None = None) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip)

    def _emit(self, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._prefix_text
        if prefix_text is None:
            prefix_text = self._prefix_text = self._decode(self._prefix_offset, self._read_offset)
        full_text = self._decode(self._prefix_offset)
        ready = len(full_text) > len(prefix_text) and not full_text.endswith(_REPLACEMENT)
        end = len(self._ids)
        if not (ready or final) and self.held_tokens > _MAX_HELD_TOKENS:
            # A long run ending in U+FFFD is invalid output, not a pending character: emit all but the last few
            # tokens (which may still be completing one), so the window stays bounded.
            # Emit only if that text is already final, i.e. the later tokens did not complete a character in it.
            end = len(self._ids) - 4
            cut_text = self._decode(self._prefix_offset, end)
            ready = full_text.startswith(cut_text) and len(cut_text) >= len(prefix_text)
            full_text = cut_text
        if not (ready or final):
            return ""
        delta = full_text[len(prefix_text):]
        if end == len(self._ids) and end - self._prefix_offset <= _MAX_WINDOW_TOKENS:
            # NOTE: full_text decoded exactly ids[prefix_offset:end], the new prefix window
            self._read_offset, self._prefix_text = end, full_text
        else:
            self._prefix_offset, self._read_offset, self._prefix_text = self._read_offset, end, None
        self._trim()
        if delta:
            self._parts.append(delta)
        return delta

    def _trim(self) -> None:
        # NOTE: ids before prefix_offset are never decoded again; dropping them keeps memory O(window).
        if self._prefix_offset > 0:
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
