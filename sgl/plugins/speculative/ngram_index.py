"""N-gram lookup: where the newest tokens of a sequence occurred before, and what followed them.

``SequenceIndex`` covers one request's own prompt and output; ``SharedNgrams`` holds the sequences of recent requests
(SGLang keeps a trie of them), so a request may draft from what an earlier one generated.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class SequenceIndex:
    """N-grams of one growing sequence, each mapped to the position after its newest occurrence.

    NOTE: only n-grams followed by at least one token are indexed, so a match always has a continuation; the
    suffix being matched is itself never indexed yet.
    """

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.ends: dict[tuple[int, ...], int] = {}
        self.indexed = 0  # n-grams ending before this position are in ``ends``

    def _catch_up(self, seq: Sequence[int]) -> None:
        for end in range(max(self.indexed, 1), len(seq)):
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self.ends[tuple(seq[end - n : end])] = end
        self.indexed = max(self.indexed, len(seq))

    def draft(self, seq: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest earlier occurrence of the sequence's suffix."""
        self._catch_up(seq)
        for n in range(min(self.max_n, len(seq)), self.min_n - 1, -1):
            end = self.ends.get(tuple(seq[len(seq) - n :]))
            if end is not None:
                return list(seq[end : end + k])
        return []


class SharedNgrams:
    """Recent requests' n-grams (LRU, at most ``capacity`` entries), each pointing into the sequence it came from."""

    def __init__(self, min_n: int, max_n: int, branch_length: int, capacity: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.branch_length = branch_length
        self.capacity = capacity
        self.entries: OrderedDict[tuple[int, ...], tuple[tuple[int, ...], int]] = OrderedDict()

    def add(self, seq: Sequence[int]) -> None:
        frozen = tuple(seq)
        for end in range(1, len(frozen)):
            for n in range(self.min_n, min(self.max_n, end) + 1):
                key = frozen[end - n : end]
                self.entries[key] = (frozen, end)
                self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def draft(self, seq: Sequence[int], k: int) -> list[int]:
        k = min(k, self.branch_length)
        for n in range(min(self.max_n, len(seq)), self.min_n - 1, -1):
            hit = self.entries.get(tuple(seq[len(seq) - n :]))
            if hit is not None:
                source, end = hit
                self.entries.move_to_end(tuple(seq[len(seq) - n :]))
                return list(source[end : end + k])
        return []
