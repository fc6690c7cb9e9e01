"""The OpenAI-compatible routes, driven by the official openai client with strict response validation."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import openai
import pytest

from sgl.core.tokenizer.tokenizer import Tokenizer
from tests.api.conftest import ServerProc

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def client(server: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, _strict_response_validation=True)


@pytest.fixture(scope="module")
def aclient(server: ServerProc) -> Callable[[], openai.AsyncOpenAI]:
    """A factory: an async client belongs to the event loop it first runs on, and each test runs its own."""
    return lambda: openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.api_key,
                                      _strict_response_validation=True)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def tokenizer(server: ServerProc) -> Tokenizer:
    with server.client() as c:
        return Tokenizer.from_dir(c.get("/get_model_info").json()["tokenizer_path"])


def test_chat_completion_usage_equals_the_tokenizers_counts(client: openai.OpenAI, model: str,
                                                             tokenizer: Tokenizer) -> None:
    resp = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=7,  # type: ignore[arg-type]
                                          extra_body={"ignore_eos": True})
    prompt_ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    assert resp.object == "chat.completion"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(prompt_ids)
    assert resp.usage.completion_tokens == 7
    assert resp.usage.total_tokens == len(prompt_ids) + 7
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.role == "assistant"


def test_any_model_name_is_accepted_but_only_the_served_one_is_listed(client: openai.OpenAI, model: str) -> None:
    assert [m.id for m in client.models.list().data] == [model]
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    resp = client.completions.create(model="whatever", prompt="hello", max_tokens=2)
    assert resp.model == model


def test_chat_stream_has_one_finish_chunk_per_choice_and_a_usage_chunk_only_when_asked(
    client: openai.OpenAI, model: str
) -> None:
    chunks = list(client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=6, n=2, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ))
    finishes = [(c.index, c.finish_reason) for ch in chunks for c in ch.choices if c.finish_reason]
    assert sorted(finishes) == [(0, "length"), (1, "length")]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    assert all(ch.usage is None for ch in chunks[:-1])
    plain = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3,  # type: ignore[arg-type]
                                                stream=True))
    assert all(ch.usage is None and ch.choices for ch in plain)


def test_greedy_stream_text_equals_the_non_streamed_text(client: openai.OpenAI, model: str) -> None:
    kwargs: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 20, "temperature": 0}
    full = client.chat.completions.create(**kwargs).choices[0].message.content  # type: ignore[call-overload]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        stream=True, **kwargs) if c.choices)  # type: ignore[call-overload]
    assert streamed == full


def test_stop_string_ends_the_text_before_it(client: openai.OpenAI, model: str) -> None:
    base = client.completions.create(model=model, prompt="The sea is", max_tokens=24, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = base[len(base) // 2: len(base) // 2 + 3]
    resp = client.completions.create(model=model, prompt="The sea is", max_tokens=24, temperature=0, stop=[stop])
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].text == base[: base.find(stop)]


def test_completion_token_prompts_with_n_number_choices_by_prompt_then_sample(
    client: openai.OpenAI, model: str, tokenizer: Tokenizer
) -> None:
    prompts = [tokenizer.encode("one two"), tokenizer.encode("three four five")]
    resp = client.completions.create(model=model, prompt=prompts, n=2, max_tokens=4, echo=True,
                                     extra_body={"ignore_eos": True})
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    for c in resp.choices:
        assert c.text.startswith(tokenizer.decode(prompts[c.index // 2]))
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(prompts[0]) + len(prompts[1])
    assert resp.usage.completion_tokens == 16


def test_legacy_logprobs_cover_every_generated_token(client: openai.OpenAI, model: str) -> None:
    resp = client.completions.create(model=model, prompt="a list of words", max_tokens=5, logprobs=3,
                                     extra_body={"ignore_eos": True})
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.top_logprobs is not None
    assert len(lp.tokens) == len(lp.token_logprobs or []) == len(lp.top_logprobs) == 5
    assert all(len(t) <= 3 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == resp.choices[0].text
    # NOTE: a character spanning two tokens is the later token's text, so streamed pieces add up to the text too
    # (the SDK types a streamed completion chunk as a Completion, whose finish_reason may not be null: not strict)
    lenient = openai.OpenAI(base_url=str(client.base_url), api_key=client.api_key)
    for prompt in ("a list of words", "Le café était très", "日本語のテキスト"):
        stream = lenient.completions.create(model=model, prompt=prompt, max_tokens=24, logprobs=1, stream=True,
                                           extra_body={"ignore_eos": True})
        chunks = [c.choices[0] for c in stream if c.choices]
        pieces = [t for c in chunks if c.logprobs is not None for t in (c.logprobs.tokens or [])]
        assert len(pieces) == 24
        assert "".join(pieces) == "".join(c.text for c in chunks)
    echoed = client.completions.create(model=model, prompt="a list of words", max_tokens=2, logprobs=0, echo=True)
    assert echoed.choices[0].text.startswith("a list of words")
    assert echoed.choices[0].logprobs is not None and len(echoed.choices[0].logprobs.tokens or []) > 2


def test_completions_default_to_16_tokens_as_openai_and_sglang_do(client: openai.OpenAI, model: str) -> None:
    resp = client.completions.create(model=model, prompt="Once upon a time", extra_body={"ignore_eos": True})
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 16
    rng = random.Random(0)
    near_the_end = [rng.randrange(10, 2000) for _ in range(1015)]  # a default never overruns the context
    resp = client.completions.create(model=model, prompt=near_the_end, extra_body={"ignore_eos": True})
    assert resp.usage is not None and resp.usage.completion_tokens == 1024 - 1015


def test_chat_default_max_tokens_fills_the_remaining_context(client: openai.OpenAI, model: str) -> None:
    rng = random.Random(0)
    prompt_ids = [rng.randrange(10, 2000) for _ in range(1000)]
    resp = client.chat.completions.create(model=model, messages=MESSAGES,  # type: ignore[arg-type]
                                          extra_body={"ignore_eos": True, "input_ids": prompt_ids})
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.prompt_tokens == 1000
    assert resp.usage.completion_tokens == 1024 - 1000


def test_seed_makes_sampling_reproducible(client: openai.OpenAI, model: str) -> None:
    texts = {client.completions.create(model=model, prompt="Once", max_tokens=8, temperature=1.0, seed=7,
                                       extra_body={"ignore_eos": True}).choices[0].text for _ in range(2)}
    assert len(texts) == 1


def test_sampling_extras_and_penalties_are_accepted(client: openai.OpenAI, model: str) -> None:
    resp = client.chat.completions.create(
        model=model, messages=MESSAGES, max_completion_tokens=4, temperature=0.7, top_p=0.9,  # type: ignore[arg-type]
        presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"5": 1.0}, user="u1", seed=1,
        extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1, "min_tokens": 4, "stop_token_ids": [3],
                    "skip_special_tokens": True, "chat_template_kwargs": {}},
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 4


def test_completion_stream_matches_non_streamed_echo(server: ServerProc, model: str) -> None:
    # NOTE: not strict: OpenAI's streamed completion chunks carry finish_reason null, which its typed client rejects.
    loose = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key)
    kwargs: dict[str, Any] = {"model": model, "prompt": "hello there", "max_tokens": 6, "temperature": 0,
                              "echo": True}
    full = loose.completions.create(**kwargs).choices[0].text  # type: ignore[call-overload]
    chunks = list(loose.completions.create(stream=True, **kwargs))  # type: ignore[call-overload]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


async def _logprob_chat(make: Callable[[], openai.AsyncOpenAI], model: str) -> None:
    aclient = make()
    resp = await aclient.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5,  # type: ignore[arg-type]
                                                 logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = resp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 5
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
               for t in content)


def test_async_client_returns_chat_logprobs(aclient: Callable[[], openai.AsyncOpenAI], model: str) -> None:
    asyncio.run(_logprob_chat(aclient, model))


async def _many_streams(make: Callable[[], openai.AsyncOpenAI], model: str, count: int) -> list[tuple[int, int, int]]:
    aclient = make()

    async def one(i: int) -> tuple[int, int, int]:
        want = 4 + i % 9
        stream = await aclient.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"request number {i}"}], max_tokens=want,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        usage = None
        finishes = 0
        async for ch in stream:
            finishes += sum(1 for c in ch.choices if c.finish_reason == "length")
            usage = ch.usage or usage
        assert usage is not None
        return want, usage.completion_tokens, finishes

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_34_concurrent_streams_all_finish_with_exact_usage(aclient: Callable[[], openai.AsyncOpenAI], model: str) -> None:
    results = asyncio.run(_many_streams(aclient, model, 34))
    assert all(want == got and finishes == 1 for want, got, finishes in results)


def test_response_format_json_schema_and_json_object_give_valid_json(client: openai.OpenAI, model: str) -> None:
    import json

    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("xgrammar")
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    resp = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "A person, as JSON"}], max_tokens=96, temperature=0.8,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    assert resp.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(resp.choices[0].message.content or ""), schema)
    resp = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Any object"}], max_tokens=96,
        response_format={"type": "json_object"},
    )
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(resp.choices[0].message.content or ""), dict)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                       response_format={"type": "xml"})  # type: ignore[typeddict-item]
