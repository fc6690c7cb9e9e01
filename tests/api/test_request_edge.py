"""The request edge that sgl.Engine and the HTTP server share: one validation, one reply router, typed results."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

import sgl
from sgl.api.offload import OFFLOAD_MIN_SIZE, offload
from sgl.api.tokenizer_manager import TokenizerManager
from sgl.core.ipc import BatchOutput, FlushCacheResp, GenerateReq, InfoResp, ReqOutput, SchedulerFailed
from sgl.core.replies import ReplyRouter, SchedulerUnavailable
from sgl.core.request_input import (
    REST_OF_CONTEXT,
    GenerateInput,
    ModelLimits,
    RequestError,
    prepare_request,
)
from sgl.core.request_manager import RequestManager
from sgl.core.request_result import GenerateResult
from sgl.core.tokenizer.length_bound import max_token_bytes
from sgl.core.tokenizer.tokenizer import Tokenizer
from tests.core.engine_utils import make_engine

LIMITS = ModelLimits(context_len=64, vocab_size=2048, max_n=4, max_total_tokens=512, max_new_tokens_limit=40)


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(demo_model_dir)


def _prepare(tokenizer: Tokenizer, limits: ModelLimits = LIMITS, **kwargs: Any) -> Any:
    kwargs.setdefault("input_ids", [5, 6, 7, 8])
    return prepare_request(GenerateInput(**kwargs), tokenizer, limits)


# --- one validation ----------------------------------------------------------------------------------------------


def test_defaults_never_exceed_the_context_left_nor_the_limit(tokenizer: Tokenizer) -> None:
    assert _prepare(tokenizer).params.max_new_tokens == 40  # the native 128, capped by --max-new-tokens-limit
    assert _prepare(tokenizer, default_max_new_tokens=16).params.max_new_tokens == 16
    assert _prepare(tokenizer, input_ids=list(range(1, 61)), default_max_new_tokens=16).params.max_new_tokens == 4
    unlimited = ModelLimits(context_len=64, vocab_size=2048)
    assert _prepare(tokenizer, unlimited, default_max_new_tokens=REST_OF_CONTEXT).params.max_new_tokens == 60


def test_an_explicit_max_over_the_limit_is_refused_under_the_callers_name(tokenizer: Tokenizer) -> None:
    with pytest.raises(RequestError, match=r"max_tokens is 41; at most 40 .*--max-new-tokens-limit") as err:
        _prepare(tokenizer, sampling_params={"max_new_tokens": 41}, max_tokens_name="max_tokens")
    assert err.value.param == "max_tokens"
    with pytest.raises(RequestError, match="plus max_new_tokens"):
        _prepare(tokenizer, input_ids=list(range(1, 41)), sampling_params={"max_new_tokens": 30})


def test_n_prompt_length_vocabulary_and_logprob_bounds_are_checked(tokenizer: Tokenizer) -> None:
    with pytest.raises(RequestError, match=r"n is 5; at most 4") as err:
        _prepare(tokenizer, sampling_params={"n": 5})
    assert err.value.param == "n"
    with pytest.raises(RequestError, match="context length is 64"):
        _prepare(tokenizer, input_ids=list(range(1, 65)))
    with pytest.raises(RequestError, match="outside the vocabulary"):
        _prepare(tokenizer, input_ids=[1, 4096])
    with pytest.raises(RequestError, match="top_logprobs_num"):
        _prepare(tokenizer, return_logprob=True, top_logprobs_num=21)
    with pytest.raises(RequestError, match="stop_regex is not supported"):
        _prepare(tokenizer, sampling_params={"stop_regex": "a+"})
    assert _prepare(tokenizer, sampling_params={"stop_regex": [], "structural_tag": None}).n == 1


def test_n_choices_become_sibling_requests_of_one_group(tokenizer: Tokenizer) -> None:
    prepared = _prepare(tokenizer, rid="abc", sampling_params={"n": 3, "max_new_tokens": 2})
    assert [r.rid for r in prepared.reqs] == ["abc-0", "abc-1", "abc-2"]
    assert {r.group for r in prepared.reqs} == {"abc"}


class _CountingTokenizer:
    """The demo tokenizer, counting how many texts it is asked to encode."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.encoded = 0
        self.max_token_bytes = inner.max_token_bytes

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.encoded += 1
        return self.inner.encode(text, add_special_tokens=add_special_tokens)


def test_a_prompt_provably_too_long_is_refused_without_tokenizing(tokenizer: Tokenizer) -> None:
    spy = _CountingTokenizer(tokenizer)
    bound = tokenizer.max_token_bytes
    assert bound is not None
    too_long = "a" * (bound * LIMITS.context_len)
    with pytest.raises(RequestError, match=rf"at least 64 tokens \({len(too_long)} bytes.*context length is 64"):
        prepare_request(GenerateInput(text=too_long), spy, LIMITS)  # type: ignore[arg-type]
    assert spy.encoded == 0
    short = GenerateInput(text="short", sampling_params={"max_new_tokens": 2})
    prepare_request(short, spy, LIMITS)  # type: ignore[arg-type]
    assert spy.encoded == 1


# --- the length bound --------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=300) | st.from_regex(r"[ \n]{1,200}|(<\|[a-z_]+\|>){1,5}", fullmatch=True))
def test_no_demo_token_stands_for_more_input_bytes_than_the_bound(demo_model_dir: Path, text: str) -> None:
    """Property: for any text, tokens >= ceil(UTF-8 bytes / max_token_bytes)."""
    tok = _demo(demo_model_dir)
    bound = tok.max_token_bytes
    assert bound is not None
    assert len(tok.encode(text, add_special_tokens=False)) >= math.ceil(len(text.encode("utf-8")) / bound)


_DEMO: dict[Path, Tokenizer] = {}


def _demo(path: Path) -> Tokenizer:
    if path not in _DEMO:
        _DEMO[path] = Tokenizer.from_dir(path)
    return _DEMO[path]


def _trained(model: Any, trainer: Any, **parts: Any) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(model)
    for name, value in parts.items():
        setattr(tok, name, value)
    tok.train_from_iterator(["the sea is wide and deep", "a ship sails on the sea at dawn"] * 20, trainer)
    return tok


def test_pipelines_that_drop_input_have_no_bound() -> None:
    bert = _trained(models.WordPiece(unk_token="[UNK]"), trainers.WordPieceTrainer(special_tokens=["[UNK]"]),
                    normalizer=normalizers.BertNormalizer(), pre_tokenizer=pre_tokenizers.BertPreTokenizer())
    assert max_token_bytes(bert) is None  # control characters and whitespace vanish
    fused = _trained(models.BPE(unk_token="<unk>", fuse_unk=True), trainers.BpeTrainer(special_tokens=["<unk>"]),
                     pre_tokenizer=pre_tokenizers.Metaspace())
    assert max_token_bytes(fused) is None  # one <unk> swallows any run of unknown characters


def test_a_metaspace_tokenizer_has_a_bound_that_holds() -> None:
    tok = _trained(models.BPE(byte_fallback=True), trainers.BpeTrainer(), pre_tokenizer=pre_tokenizers.Metaspace(),
                   decoder=decoders.Metaspace())
    bound = max_token_bytes(tok)
    assert bound is not None
    for text in ["the sea", "      ", "the sea is wide and deep " * 10]:
        assert len(tok.encode(text).ids) >= math.ceil(len(text.encode()) / bound)


# --- one reply router --------------------------------------------------------------------------------------------


class _Sent(list[Any]):
    def __call__(self, msg: Any) -> None:
        self.append(msg)


def test_the_reply_router_answers_threads_and_coroutines_and_fails_them_all(tokenizer: Tokenizer) -> None:
    sent = _Sent()
    router = ReplyRouter(RequestManager(tokenizer, LIMITS, sent))
    info = router.info()
    token = sent[-1].token
    threading.Thread(target=router.deliver, args=(InfoResp(token, {"x": 1}),)).start()
    assert info.result(5).info == {"x": 1}  # a thread waits on it (sgl.Engine)

    async def flush() -> bool:
        fut = asyncio.wrap_future(router.flush())  # a coroutine awaits it (the server)
        asyncio.get_running_loop().call_later(0.01, router.deliver, FlushCacheResp(True))
        return (await fut).ok

    assert asyncio.run(flush())
    waiting = router.info()
    router.deliver(SchedulerFailed("boom"))
    with pytest.raises(SchedulerUnavailable, match="boom"):
        waiting.result(5)
    with pytest.raises(SchedulerUnavailable):
        router.info()


def test_pending_requests_end_in_a_500_abort_when_the_scheduler_fails(tokenizer: Tokenizer) -> None:
    sent = _Sent()
    manager = RequestManager(tokenizer, LIMITS, sent)
    router = ReplyRouter(manager)

    async def run() -> list[GenerateResult]:
        prepared = manager.prepare(GenerateInput(input_ids=[5, 6], rid="r", sampling_params={"max_new_tokens": 4}))
        agen = manager.generate(prepared)
        task = asyncio.ensure_future(agen.__anext__())
        await asyncio.sleep(0.01)
        assert isinstance(sent[-1], GenerateReq)
        router.deliver(BatchOutput([ReqOutput("r", [9], None, 2, 1, 0)]))
        router.deliver(SchedulerFailed("the scheduler died"))
        return await task

    final = asyncio.run(run())
    assert final[0].meta.aborted and final[0].meta.error_status == 500
    assert final[0].output_ids == [9]
    assert final[0].to_dict()["meta_info"]["error_status"] == 500


@pytest.fixture(scope="module")
def limited_engine(demo_model_dir: Path) -> Iterator[sgl.Engine]:
    with make_engine(demo_model_dir, max_new_tokens_limit=8) as eng:
        yield eng


def test_engine_and_server_route_replies_through_the_same_router(limited_engine: sgl.Engine) -> None:
    assert type(limited_engine.replies) is ReplyRouter
    assert limited_engine.get_server_info()["max_total_tokens"] == 8192  # an info reply, routed back
    assert limited_engine.flush_cache()
    assert "ReplyRouter" in TokenizerManager.__init__.__code__.co_names  # the server builds the same one


# --- sgl.Engine ----------------------------------------------------------------------------------------------------


def test_max_new_tokens_limit_holds_for_the_engine(limited_engine: sgl.Engine) -> None:
    with pytest.raises(ValueError, match="--max-new-tokens-limit"):
        limited_engine.generate("hello", {"max_new_tokens": 9})
    out = limited_engine.generate("hello", {"ignore_eos": True, "temperature": 0.0})
    assert out["meta_info"]["completion_tokens"] == 8
    assert set(out) == {"text", "output_ids", "meta_info"}  # SGLang's public shape, from the typed result


# --- off the loop ----------------------------------------------------------------------------------------------


def test_long_work_runs_on_the_offload_pool_and_short_work_inline() -> None:
    async def where(size: int) -> str:
        return await offload(lambda: threading.current_thread().name, size)

    assert asyncio.run(where(OFFLOAD_MIN_SIZE)).startswith("sgl-offload")
    assert asyncio.run(where(10)) == threading.main_thread().name
