"""At temperature > 0, verification keeps the target's distribution: a chi-square test of the joint distribution of
three sampled tokens (the last two through one verify step with drafts) against the exact one, on an 8-token vocab,
with a negative control (a verifier that accepts every draft) that the same test must reject."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sgl.core.sampling.params import SamplingParams
from sgl.core.speculative.verify import VerifyResult, verify_drafts
from tests.core.tiny_models import load_hf_model, make_tiny_hf_model
from tests.speculative.oracle import ScriptedDrafts, run, runtime, with_feature

V = 8
PROMPT = [3, 4, 5]
N = 1500


@pytest.fixture(scope="module")
def tiny_vocab_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v8") / "model"
    make_tiny_hf_model("llama", path, seed=3, vocab_size=V, num_hidden_layers=1, initializer_range=0.5)
    return path


def _exact(model_dir: Path) -> dict[tuple[int, int, int], float]:
    """p(x1, x2, x3 | PROMPT) at temperature 1, from Hugging Face's forward of the same weights."""
    hf = load_hf_model(model_dir)

    def probs(ids: list[int]) -> list[float]:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].double()
        return torch.softmax(logits, -1).tolist()

    p1 = probs(PROMPT)
    joint = {}
    for a in range(V):
        p2 = probs(PROMPT + [a])
        for b in range(V):
            p3 = probs(PROMPT + [a, b])
            for c in range(V):
                joint[(a, b, c)] = p1[a] * p2[b] * p3[c]
    return joint


class GreedyGuess(ScriptedDrafts):
    """Drafts the two most likely next tokens after the first output (a deterministic proposal)."""

    def __init__(self, joint: dict[tuple[int, int, int], float], accept_all: bool = False) -> None:
        super().__init__({}, 2)
        self.joint, self.accept_all = joint, accept_all

    def guess(self, a: int) -> list[int]:
        b = max(range(V), key=lambda x: sum(self.joint[(a, x, c)] for c in range(V)))
        c = max(range(V), key=lambda x: self.joint[(a, b, x)])
        return [b, c]

    def decode_step(self, batch: Any, state: Any, executor: Any) -> VerifyResult | None:
        drafts = [self.guess(r.output_ids[0]) if len(r.output_ids) == 1 else [] for r in batch.reqs]
        result = verify_drafts(batch, state, executor, drafts)
        if result is not None and self.accept_all:  # the negative control: a verifier that checks nothing
            tokens = [d + t[-1:] if d else t for d, t in zip(drafts, result.tokens)]
            result = result._replace(tokens=tokens, logprobs=[[None] * len(t) for t in tokens])
        if result is not None:
            self.accepted += sum(len(t) - 1 for t in result.tokens)
            self.drafted += sum(result.drafted)
        return result


def _chi_square(observed: dict[tuple[int, int, int], int], exact: dict[tuple[int, int, int], float]) -> tuple[float, int]:
    """Chi-square statistic and degrees of freedom, cells expected below 5 pooled into one."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for key, p in exact.items():
        e, o = N * p, observed.get(key, 0)
        if e < 5:
            pooled_obs += o
            pooled_exp += e
            continue
        stat += (o - e) ** 2 / e
        cells += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    return stat, cells - 1


def _critical(df: int, z: float = 3.719) -> float:
    """The chi-square quantile at p = 1e-4 (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _sample(model_dir: Path, demo_model_dir: Path, algo: GreedyGuess) -> dict[tuple[int, int, int], int]:
    rt = runtime(model_dir, tokenizer_path=str(demo_model_dir), max_total_tokens=8192, context_length=32,
                 max_running_requests=256)
    params = SamplingParams(max_new_tokens=3, temperature=1.0, ignore_eos=True)
    got = run(with_feature(rt, algo), [(f"s{i}", PROMPT, params) for i in range(N)])
    counts: dict[tuple[int, int, int], int] = {}
    for ids, _ in got.values():
        key = (ids[0], ids[1], ids[2])
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_verified_sampling_keeps_the_target_distribution_and_a_broken_verifier_is_caught(
    tiny_vocab_model: Path, demo_model_dir: Path
) -> None:
    exact = _exact(tiny_vocab_model)
    assert abs(sum(exact.values()) - 1) < 1e-9
    honest = GreedyGuess(exact)
    stat, df = _chi_square(_sample(tiny_vocab_model, demo_model_dir, honest), exact)
    assert 0 < honest.accepted < honest.drafted, "both outcomes of verification must occur"
    assert stat < _critical(df), (stat, df)
    broken = GreedyGuess(exact, accept_all=True)
    stat_broken, df_broken = _chi_square(_sample(tiny_vocab_model, demo_model_dir, broken), exact)
    assert stat_broken > _critical(df_broken), (stat_broken, df_broken)
