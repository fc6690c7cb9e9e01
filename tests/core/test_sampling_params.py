from __future__ import annotations

import pytest

from sgl.core.sampling.params import SamplingParams


def test_defaults_match_sglang_native_api() -> None:
    p = SamplingParams()
    assert (p.max_new_tokens, p.min_new_tokens, p.temperature, p.top_p, p.top_k, p.min_p) == (
        128,
        0,
        1.0,
        1.0,
        -1,
        0.0,
    )
    assert (p.frequency_penalty, p.presence_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.stop is None and p.stop_token_ids is None and p.seed is None and p.logit_bias is None
    assert (
        not p.ignore_eos and p.skip_special_tokens and p.spaces_between_special_tokens and not p.no_stop_trim
    )
    assert p.n == 1 and not p.is_greedy
    p.validate(vocab_size=10)


def test_from_dict_treats_none_as_unset_and_accepts_sampling_seed_alias() -> None:
    p = SamplingParams.from_dict(
        {"temperature": None, "max_new_tokens": 7, "sampling_seed": 42, "stop": None}
    )
    assert p.temperature == 1.0 and p.max_new_tokens == 7 and p.seed == 42 and p.stop is None
    assert SamplingParams.from_dict(None) == SamplingParams()


def test_from_dict_rejects_conflicting_seed_and_alias() -> None:
    with pytest.raises(ValueError, match="sampling_seed"):
        SamplingParams.from_dict({"seed": 1, "sampling_seed": 2})


def test_from_dict_names_unknown_fields_and_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown sampling params: bogus, temprature") as err:
        SamplingParams.from_dict({"temprature": 0.5, "bogus": 1})
    assert "temperature" in str(err.value) and "max_new_tokens" in str(err.value)


def test_stop_is_normalised_to_a_list_and_logit_bias_keys_to_ints() -> None:
    p = SamplingParams.from_dict({"stop": "###", "logit_bias": {"5": 2.0, 7: -1.0}, "stop_token_ids": (3, 4)})
    assert p.stop == ["###"]
    assert p.logit_bias == {5: 2.0, 7: -1.0}
    assert p.stop_token_ids == [3, 4]


def test_to_dict_round_trips_through_from_dict() -> None:
    p = SamplingParams(temperature=0.3, stop=["a", "b"], seed=9, logit_bias={3: 1.5}, regex="[ab]+")
    assert SamplingParams.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    ("fields", "vocab", "message"),
    [
        ({"max_new_tokens": -1}, None, "max_new_tokens must be >= 0"),
        ({"min_new_tokens": -1}, None, "min_new_tokens must be >= 0"),
        ({"min_new_tokens": 5, "max_new_tokens": 4}, None, r"min_new_tokens must be <= max_new_tokens \(4\)"),
        ({"temperature": -0.1}, None, "temperature must be >= 0"),
        ({"top_p": 0.0}, None, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, None, r"top_p must be in \(0, 1\]"),
        ({"top_k": -2}, None, "top_k must be -1 or 0"),
        ({"min_p": 1.5}, None, r"min_p must be in \[0, 1\]"),
        ({"min_p": -0.1}, None, r"min_p must be in \[0, 1\]"),
        ({"frequency_penalty": 2.5}, None, r"frequency_penalty must be in \[-2.0, 2.0\]"),
        ({"presence_penalty": -3}, None, r"presence_penalty must be in \[-2.0, 2.0\]"),
        ({"repetition_penalty": 0.0}, None, r"repetition_penalty must be in \(0, 2.0\]"),
        ({"repetition_penalty": 2.5}, None, r"repetition_penalty must be in \(0, 2.0\]"),
        ({"n": 0}, None, "n must be >= 1"),
        ({"logit_bias": {10: 1.0}}, 10, r"logit_bias token id 10 is outside the vocabulary \[0, 10\)"),
        ({"logit_bias": {-1: 1.0}}, None, "logit_bias token id -1 is outside the vocabulary"),
        ({"logit_bias": {"abc": 1.0}}, None, "logit_bias token ids must be integers"),
        ({"logit_bias": {3: 101.0}}, 10, r"logit_bias values must be numbers in \[-100.0, 100.0\]"),
        ({"stop": ["ok", ""]}, None, "stop strings must be non-empty"),
        ({"stop": ""}, None, "stop strings must be non-empty"),
        ({"stop_token_ids": [3, 12]}, 10, r"stop_token_ids token id 12 is outside the vocabulary \[0, 10\)"),
        ({"temperature": "hot"}, None, "temperature must be a number"),
        ({"max_new_tokens": 1.5}, None, "max_new_tokens must be an integer"),
        ({"ignore_eos": "yes"}, None, "ignore_eos must be a boolean"),
        ({"seed": "x"}, None, "seed must be an integer"),
        ({"regex": 5}, None, "regex must be a string"),
    ],
)
def test_validate_error_names_the_field_and_the_limit(fields: dict, vocab: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams.from_dict(fields).validate(vocab_size=vocab)


def test_boundary_values_are_accepted() -> None:
    SamplingParams(
        max_new_tokens=0,
        top_p=1.0,
        top_k=0,
        min_p=1.0,
        frequency_penalty=-2.0,
        presence_penalty=2.0,
        repetition_penalty=2.0,
        logit_bias={0: -100.0, 9: 100},
        stop_token_ids=[9],
    ).validate(vocab_size=10)


def test_is_greedy_for_zero_temperature_or_top_k_one() -> None:
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(temperature=0.7, top_k=1).is_greedy
    assert not SamplingParams(temperature=0.7, top_k=2).is_greedy
    assert not SamplingParams(temperature=0.7, top_k=0).is_greedy
