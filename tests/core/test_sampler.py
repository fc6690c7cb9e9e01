from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
import torch

from sgl.core.sampling.batch_info import SamplingBatchInfo, step_seed
from sgl.core.sampling.params import SamplingParams
from sgl.core.sampling.sampler import Sampler, compute_prompt_logprobs, filter_probs, process_logits


def make_info(
    params: Sequence[SamplingParams],
    vocab: int,
    outputs: Sequence[Sequence[int]] | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    eos: Sequence[set[int]] | None = None,
    step_seeds: Sequence[int | None] | None = None,
) -> SamplingBatchInfo:
    outputs = outputs if outputs is not None else [[] for _ in params]
    prompts = prompts if prompts is not None else [[1, 2] for _ in params]
    return SamplingBatchInfo.build(params, vocab, "cpu", outputs, prompts, eos, step_seeds)


def random_logits(batch: int, vocab: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vocab, generator=g) * scale


def test_build_with_plain_params_creates_no_optional_state() -> None:
    info = make_info([SamplingParams(), SamplingParams(temperature=0.0)], vocab=16)
    assert info.penalties is None and info.logit_bias is None and info.min_tokens_mask is None
    assert not (info.all_greedy or info.need_top_k or info.need_top_p or info.need_min_p)
    assert info.top_ks.tolist() == [16, 16]
    assert info.temperatures.shape == (2, 1) and info.temperatures.flatten().tolist() == [1.0, 1.0]
    assert info.is_greedy.tolist() == [False, True]
    assert info.row_seeds == (None, None)


def test_build_flags_ignore_knobs_of_greedy_rows() -> None:
    info = make_info([SamplingParams(temperature=0.0, top_p=0.5, top_k=3, min_p=0.2)], vocab=16)
    assert info.all_greedy and not (info.need_top_k or info.need_top_p or info.need_min_p)
    mixed = make_info([SamplingParams(top_k=3), SamplingParams(top_k=40)], vocab=16)
    assert mixed.need_top_k and mixed.top_ks.tolist() == [3, 16]


def test_greedy_equals_argmax_and_leaves_caller_logits_untouched() -> None:
    logits = random_logits(8, 50)
    before = logits.clone()
    params = [SamplingParams(temperature=0.0, logit_bias={0: 0.5}) for _ in range(8)]
    out = Sampler()(logits, make_info(params, 50))
    biased = before.clone()
    biased[:, 0] += 0.5
    assert torch.equal(out.next_token_ids, biased.argmax(-1))
    assert out.next_token_ids.dtype == torch.int64
    assert torch.equal(logits, before)
    assert out.next_token_logprobs is None and out.top_logprobs is None


def test_top_k_one_and_tiny_top_p_and_min_p_one_give_the_argmax() -> None:
    logits = random_logits(6, 40, seed=1, scale=1.0)
    argmax = logits.argmax(-1)
    for params in (
        SamplingParams(temperature=1.5, top_k=1),
        SamplingParams(temperature=1.5, top_p=1e-6),
        SamplingParams(temperature=1.5, min_p=1.0),
    ):
        for seed in range(3):
            torch.manual_seed(seed)
            out = Sampler()(logits, make_info([params] * 6, 40))
            assert torch.equal(out.next_token_ids, argmax), params


def test_mixed_batch_greedy_rows_take_argmax() -> None:
    logits = torch.zeros(2, 30)
    logits[:, 7] = 1.0
    torch.manual_seed(0)
    info = make_info([SamplingParams(temperature=0.0), SamplingParams(temperature=100.0)], 30)
    ids = torch.stack([Sampler()(logits, info).next_token_ids for _ in range(20)])
    assert (ids[:, 0] == 7).all()
    assert len(set(ids[:, 1].tolist())) > 3  # the hot row really samples


def test_filter_probs_top_k_then_top_p_over_renormalised_mass_then_min_p() -> None:
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]] * 4)
    params = [
        SamplingParams(top_p=0.7),  # keeps 0.5, 0.3 (0.8 before the 0.15 exceeds 0.7)
        SamplingParams(top_p=0.85),  # keeps 0.5, 0.3, 0.15
        SamplingParams(top_k=2, top_p=0.6),  # top-2 mass 0.8; 0.6 of it is 0.48 < 0.5: only 0.5
        SamplingParams(min_p=0.4),  # threshold 0.2: keeps 0.5, 0.3
    ]
    kept = filter_probs(probs, make_info(params, 4)) > 0
    assert kept.tolist() == [
        [False, True, False, True],
        [False, True, True, True],
        [False, True, False, False],
        [False, True, False, True],
    ]


def test_sampled_tokens_never_leave_the_top_k_or_min_p_set() -> None:
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]])).repeat(2000, 1)
    torch.manual_seed(0)
    top_k = Sampler()(logits, make_info([SamplingParams(top_k=2)] * 2000, 4)).next_token_ids
    min_p = Sampler()(logits, make_info([SamplingParams(min_p=0.4)] * 2000, 4)).next_token_ids
    assert set(top_k.tolist()) == {1, 3} and set(min_p.tolist()) == {1, 3}


@pytest.mark.parametrize("temperature", [0.7, 2.0])
def test_temperature_sampling_matches_softmax_distribution(temperature: float) -> None:
    """Chi-square of 20000 draws against softmax(logits / T); the seed is fixed, so the test is deterministic."""
    base = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.5, 2.0])
    n = 20000
    torch.manual_seed(1234)
    ids = Sampler()(
        base.repeat(n, 1), make_info([SamplingParams(temperature=temperature)] * n, 6)
    ).next_token_ids
    observed = torch.bincount(ids, minlength=6).double()
    expected = torch.softmax(base.double() / temperature, dim=-1) * n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 25.0, (chi2, observed.tolist(), expected.tolist())  # df=5: p < 2e-4 for a correct sampler
    # A sampler that ignored temperature would fail the same test.
    wrong = torch.softmax(base.double(), dim=-1) * n
    assert float(((observed - wrong) ** 2 / wrong).sum()) > 100.0


def naive_penalties(row: list[float], p: SamplingParams, prompt: list[int], output: list[int]) -> list[float]:
    row = list(row)
    for t in set(prompt) | set(output):
        row[t] = row[t] / p.repetition_penalty if row[t] > 0 else row[t] * p.repetition_penalty
    for t in range(len(row)):
        count = output.count(t)
        row[t] -= p.frequency_penalty * count + p.presence_penalty * (1 if count > 0 else 0)
    return row


def test_penalties_match_a_naive_implementation() -> None:
    vocab = 7
    logits = torch.tensor(
        [
            [1.0, -2.0, 0.5, 3.0, -0.5, 0.0, 2.0],
            [0.3, 1.2, -1.0, -3.0, 2.5, 1.0, -0.2],
            [2.0, 2.0, 2.0, -2.0, -2.0, -2.0, 0.0],
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        ]
    )
    params = [
        SamplingParams(frequency_penalty=0.5, presence_penalty=0.25),
        SamplingParams(repetition_penalty=1.5),
        SamplingParams(frequency_penalty=-0.3, presence_penalty=1.0, repetition_penalty=0.8),
        SamplingParams(),
    ]
    prompts = [[0, 1], [2, 3, 3], [1, 4], [0, 1, 2]]
    outputs = [[3, 3, 6, 3], [4, 0], [5, 5, 1, 3], [3, 3]]
    info = make_info(params, vocab, outputs, prompts)
    got = process_logits(logits, info)
    for i, p in enumerate(params):
        want = naive_penalties(logits[i].tolist(), p, prompts[i], outputs[i])
        assert got[i].tolist() == pytest.approx(want, abs=1e-6), i


def test_logit_bias_forces_and_forbids_tokens() -> None:
    logits = random_logits(4, 20, seed=3, scale=1.0)
    torch.manual_seed(0)
    forced = Sampler()(logits, make_info([SamplingParams(logit_bias={"11": 100.0})] * 4, 20)).next_token_ids
    assert forced.tolist() == [11] * 4
    best = int(logits[0].argmax())
    banned = make_info([SamplingParams(temperature=0.0, logit_bias={best: -100.0})], 20)
    assert int(Sampler()(logits[:1], banned).next_token_ids[0]) != best


def test_min_new_tokens_blocks_eos_and_stop_token_ids_until_reached() -> None:
    logits = torch.zeros(1, 10)
    logits[0, 0], logits[0, 5], logits[0, 2] = 9.0, 8.0, 1.0  # eos 0, stop token 5, then token 2
    p = SamplingParams(temperature=0.0, min_new_tokens=3, stop_token_ids=[5])
    early = make_info([p], 10, outputs=[[2, 2]], eos=[{0}])
    assert int(Sampler()(logits, early).next_token_ids[0]) == 2
    done = make_info([p], 10, outputs=[[2, 2, 2]], eos=[{0}])
    assert done.min_tokens_mask is None and int(Sampler()(logits, done).next_token_ids[0]) == 0
    # ignore_eos: EOS no longer ends the request, so only the stop token stays forbidden.
    ignore = make_info([dataclasses.replace(p, ignore_eos=True)], 10, outputs=[[]], eos=[{0}])
    assert int(Sampler()(logits, ignore).next_token_ids[0]) == 0
    no_stop = make_info([dataclasses.replace(p, ignore_eos=True, stop_token_ids=None)], 10, eos=[{0}])
    assert no_stop.min_tokens_mask is None


def test_vocab_mask_set_by_a_plugin_forbids_tokens() -> None:
    logits = torch.arange(8.0).repeat(2, 1)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 7] = True
    mask[1, 6] = True
    info = dataclasses.replace(make_info([SamplingParams(temperature=0.0)] * 2, 8), vocab_mask=mask)
    assert Sampler()(logits, info).next_token_ids.tolist() == [6, 5]


def test_a_tiny_repetition_penalty_keeps_sampling_inside_the_mask() -> None:
    """1e-300 is a valid penalty: dividing a positive logit by it must not give inf, whose softmax is NaN and samples
    token 0 whatever the mask says (a fuzzed request found this as a 500)."""
    logits = torch.tensor([[5.0, 3.0, 2.0, 4.0]]).repeat(4, 1)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 0] = True  # token 0 forbidden
    params = [SamplingParams(temperature=t, repetition_penalty=1e-300) for t in (1.0, 0.5, 1e-5, 0.0)]
    info = dataclasses.replace(make_info(params, 4, outputs=[[1, 3]] * 4), vocab_mask=mask)
    for _ in range(20):
        out = Sampler()(logits, info, return_logprob=True)
        assert 0 not in out.next_token_ids.tolist(), out.next_token_ids  # 1, 2 (prompt) and 3 are the seen ones
        assert torch.isfinite(out.next_token_logprobs).all()


def seeded_tokens(batch: list[SamplingParams], row: int, steps: int, global_seed: int) -> list[int]:
    """Tokens of `row` over `steps` decode steps; logits of every row are the same flat-ish distribution."""
    torch.manual_seed(global_seed)
    vocab = 64
    logits = random_logits(1, vocab, seed=5, scale=0.5).repeat(len(batch), 1)
    tokens: list[int] = []
    outputs: list[list[int]] = [[] for _ in batch]
    for _ in range(steps):
        out = Sampler()(logits, make_info(batch, vocab, outputs=outputs)).next_token_ids.tolist()
        tokens.append(out[row])
        for i, t in enumerate(out):
            outputs[i].append(t)
    return tokens


def test_seeded_request_gets_same_tokens_whatever_its_batch_and_row() -> None:
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=123)
    alone = seeded_tokens([seeded], row=0, steps=12, global_seed=0)
    first = seeded_tokens(
        [seeded, SamplingParams(), SamplingParams(temperature=0.0)], row=0, steps=12, global_seed=1
    )
    last = seeded_tokens(
        [SamplingParams(seed=7), SamplingParams(top_k=5), SamplingParams(), seeded],
        row=3,
        steps=12,
        global_seed=2,
    )
    assert alone == first == last
    assert len(set(alone)) > 3  # the seed varies with the step: not one token repeated
    other = seeded_tokens([dataclasses.replace(seeded, seed=124)], row=0, steps=12, global_seed=0)
    assert other != alone


def test_explicit_step_seeds_override_the_derived_ones() -> None:
    logits = random_logits(1, 64, seed=9, scale=0.5)
    p = SamplingParams(seed=42)
    derived = Sampler()(logits, make_info([p], 64, outputs=[[1, 2, 3]])).next_token_ids
    explicit = make_info([SamplingParams()], 64, step_seeds=[step_seed(42, 3)])
    assert explicit.row_seeds == (step_seed(42, 3),)
    assert torch.equal(Sampler()(logits, explicit).next_token_ids, derived)


def test_logprobs_are_log_softmax_after_bias_before_temperature() -> None:
    logits = random_logits(3, 30, seed=4)
    params = [
        SamplingParams(temperature=0.5, logit_bias={2: 3.0}),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.3, top_k=4),
    ]
    out = Sampler()(logits, make_info(params, 30), return_logprob=True, top_logprobs_nums=[3, 0, 5])
    adjusted = logits.clone()
    adjusted[0, 2] += 3.0
    want = torch.log_softmax(adjusted, dim=-1)
    assert out.next_token_logprobs is not None and out.top_logprobs is not None
    expected = want.gather(1, out.next_token_ids.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(out.next_token_logprobs, expected)
    assert [len(v) for v, _ in out.top_logprobs] == [3, 0, 5]
    for row, (values, ids) in enumerate(out.top_logprobs):
        assert values == sorted(values, reverse=True)
        assert ids == want[row].argsort(descending=True)[: len(ids)].tolist()
        assert values == pytest.approx(want[row, ids].tolist())


def test_prompt_logprobs_match_log_softmax_of_each_position() -> None:
    logits = random_logits(5, 12, seed=6)
    next_ids = torch.tensor([3, 0, 11, 7, 7])
    result = compute_prompt_logprobs(logits, next_ids, top_k=2)
    want = torch.log_softmax(logits, dim=-1)
    torch.testing.assert_close(result.token_logprobs, want[torch.arange(5), next_ids])
    assert len(result.top_logprobs) == 5
    for row, (values, ids) in enumerate(result.top_logprobs):
        assert ids == want[row].topk(2).indices.tolist() and values[0] >= values[1]
    assert compute_prompt_logprobs(logits, next_ids, top_k=0).top_logprobs == [([], [])] * 5


def test_token_matrix_counts_repeats_per_row_and_drops_ids_outside_the_vocabulary() -> None:
    from sgl.core.sampling.penalties import token_matrix

    counts = token_matrix([(0, [1, 1, 9, -1, 3]), (2, [4, 7, 4]), (0, [3])], 3, 5, "cpu")
    assert counts.tolist() == [[0, 2, 0, 2, 0], [0] * 5, [0, 0, 0, 0, 2]]
    assert token_matrix([(1, [5, 6])], 2, 5, "cpu").tolist() == [[0] * 5, [0] * 5]
