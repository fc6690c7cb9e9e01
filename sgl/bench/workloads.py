"""Synthetic workloads as token ids: random lengths, and shared prefixes (few long system prompts, many questions).

Ids come straight from a seeded generator over ``[0, vocab)``, so a workload is the same for a seed on every run and
every engine it is compared across (radix on/off, sgl vs another server).
"""

from __future__ import annotations

import random
from typing import NamedTuple

WORKLOADS = ("random", "shared-prefix")


class BenchRequest(NamedTuple):
    input_ids: list[int]
    output_len: int
    group: int | None = None  # shared-prefix: the index of its system prompt


def _lengths(rng: random.Random, n: int, full: int, range_ratio: float) -> list[int]:
    """``n`` lengths uniform in ``[max(1, full * range_ratio), full]``; range_ratio 1 makes them all ``full``."""
    if not 0.0 <= range_ratio <= 1.0:
        raise ValueError(f"range_ratio must be in [0, 1]; got {range_ratio}")
    if full < 1:
        raise ValueError(f"lengths must be >= 1; got {full}")
    low = max(1, int(full * range_ratio))
    return [rng.randint(low, full) for _ in range(n)]


def _ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(n)]


def random_workload(
    num_prompts: int, input_len: int, output_len: int, vocab: int, range_ratio: float = 1.0, seed: int = 0
) -> list[BenchRequest]:
    """Independent prompts (no shared prefixes beyond chance) with lengths drawn per request."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1; got {num_prompts}")
    if vocab < 1:
        raise ValueError(f"vocab must be >= 1; got {vocab}")
    rng = random.Random(seed)
    ins = _lengths(rng, num_prompts, input_len, range_ratio)
    outs = _lengths(rng, num_prompts, output_len, range_ratio)
    return [BenchRequest(_ids(rng, n, vocab), m) for n, m in zip(ins, outs)]


def shared_prefix_workload(
    num_groups: int, questions_per_group: int, system_prompt_len: int, question_len: int, output_len: int,
    vocab: int, seed: int = 0,
) -> list[BenchRequest]:
    """``num_groups`` system prompts, each followed by ``questions_per_group`` distinct questions.

    NOTE: requests come group by group (all of group 0, then group 1, ...), as a chat service sees them; the
    scheduler's policy, not the workload, decides how much of the sharing it exploits.
    """
    if num_groups < 1 or questions_per_group < 1:
        raise ValueError("num_groups and questions_per_group must be >= 1")
    if system_prompt_len < 1 or question_len < 1 or output_len < 1:
        raise ValueError("system_prompt_len, question_len and output_len must be >= 1")
    rng = random.Random(seed)
    reqs = []
    for g in range(num_groups):
        system = _ids(rng, system_prompt_len, vocab)
        for _ in range(questions_per_group):
            reqs.append(BenchRequest(system + _ids(rng, question_len, vocab), output_len, g))
    return reqs


class WorkloadSpec(NamedTuple):
    """The CLI's workload options in one value, so offline and serving build workloads the same way."""

    workload: str = "random"
    num_prompts: int = 16
    input_len: int = 256
    output_len: int = 32
    range_ratio: float = 1.0
    num_groups: int = 4
    questions_per_group: int = 8
    system_prompt_len: int = 768
    question_len: int = 32
    seed: int = 0

    def build(self, vocab: int) -> list[BenchRequest]:
        if self.workload == "random":
            return random_workload(self.num_prompts, self.input_len, self.output_len, vocab, self.range_ratio,
                                   self.seed)
        if self.workload == "shared-prefix":
            return shared_prefix_workload(self.num_groups, self.questions_per_group, self.system_prompt_len,
                                          self.question_len, self.output_len, vocab, self.seed)
        raise ValueError(f"unknown workload {self.workload!r}; known: {', '.join(WORKLOADS)}")

    def describe(self) -> dict[str, object]:
        keys: tuple[str, ...]
        if self.workload == "shared-prefix":
            keys = ("workload", "num_groups", "questions_per_group", "system_prompt_len", "question_len",
                    "output_len", "seed")
        else:
            keys = ("workload", "num_prompts", "input_len", "output_len", "range_ratio", "seed")
        return {k: getattr(self, k) for k in keys}
