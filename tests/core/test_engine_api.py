"""sgl.Engine's user-facing behaviour: shapes, stop conditions, streaming, logprobs, n > 1, seeds, bad input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

import sgl
from tests.core.engine_utils import make_engine, settled_info

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path):  # type: ignore[no-untyped-def]
    with make_engine(demo_model_dir) as eng:
        yield eng


def test_generate_returns_sglang_shaped_dict(engine: sgl.Engine) -> None:
    out = engine.generate("Hello there", {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True})
    assert set(out) == {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "matched": None}
    assert meta["prompt_tokens"] == len(engine.tokenizer.encode("Hello there"))
    assert meta["completion_tokens"] == 5 == len(out["output_ids"])
    assert out["text"] == engine.tokenizer.decode(out["output_ids"])
    assert isinstance(meta["id"], str)


def test_sampling_params_object_and_list_input(engine: sgl.Engine) -> None:
    sp = sgl.SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True)
    outs = engine.generate(["a", "b c"], sp)
    assert [o["meta_info"]["completion_tokens"] for o in outs] == [3, 3]


def test_stop_string_is_not_in_the_output(engine: sgl.Engine) -> None:
    base = engine.generate("The cat", {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True})
    text = base["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), text
    out = engine.generate("The cat", {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True, "stop": [stop]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert stop not in out["text"]
    assert text.startswith(out["text"])


def test_stop_token_ids_and_eos_from_generation_config(engine: sgl.Engine) -> None:
    base = engine.generate("Once", {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True})
    tok = base["output_ids"][5]
    out = engine.generate("Once", {"max_new_tokens": 12, "temperature": 0, "stop_token_ids": [tok]})
    first = base["output_ids"].index(tok)
    assert out["output_ids"] == base["output_ids"][: first + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": tok}
    eos = set(engine.runtime.scheduler.eos_ids)
    assert len(eos) >= 2  # the demo model's generation_config lists two EOS ids


def test_min_new_tokens_delays_stop_tokens(engine: sgl.Engine) -> None:
    base = engine.generate("Once", {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True})
    tok = base["output_ids"][0]
    early = engine.generate("Once", {"max_new_tokens": 12, "temperature": 0, "stop_token_ids": [tok]})
    assert len(early["output_ids"]) == 1
    later = engine.generate(
        "Once", {"max_new_tokens": 12, "temperature": 0, "stop_token_ids": [tok], "min_new_tokens": 4}
    )
    assert len(later["output_ids"]) >= 4


def test_stream_yields_cumulative_chunks_ending_in_the_full_result(engine: sgl.Engine) -> None:
    params = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
    full = engine.generate("Stream me", params)

    async def collect() -> list[dict]:
        chunks = []
        async for chunk in await engine.async_generate("Stream me", params, stream=True):
            chunks.append(chunk)
        return chunks

    chunks = asyncio.new_event_loop().run_until_complete(collect())
    assert len(chunks) >= 2
    for a, b in zip(chunks, chunks[1:]):
        assert b["text"].startswith(a["text"])
        assert b["output_ids"][: len(a["output_ids"])] == a["output_ids"]
    assert chunks[-1]["output_ids"] == full["output_ids"]
    assert chunks[-1]["text"] == full["text"]
    assert [c["meta_info"]["finish_reason"] is None for c in chunks[:-1]] == [True] * (len(chunks) - 1)
    sync_chunks = list(engine.generate("Stream me", params, stream=True))
    assert sync_chunks[-1]["output_ids"] == full["output_ids"]


def test_logprobs_equal_transformers_log_softmax(engine: sgl.Engine, demo_model_dir: Path) -> None:
    ids = engine.tokenizer.encode("Logprobs are checked against the oracle")
    out = engine.generate(
        input_ids=ids, sampling_params={"max_new_tokens": 6, "temperature": 0, "ignore_eos": True},
        return_logprob=True, logprob_start_len=0, top_logprobs_num=3,
    )
    meta = out["meta_info"]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(demo_model_dir), torch_dtype=torch.float32)
    full = torch.tensor([ids + out["output_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0].float(), dim=-1)
    n = len(ids)
    want_out = [logp[n - 1 + k, t].item() for k, t in enumerate(out["output_ids"])]
    got_out = [e[0] for e in meta["output_token_logprobs"]]
    assert [e[1] for e in meta["output_token_logprobs"]] == out["output_ids"]
    assert got_out == pytest.approx(want_out, abs=1e-4)
    assert len(meta["output_top_logprobs"]) == 6 and all(len(t) == 3 for t in meta["output_top_logprobs"])
    assert meta["output_top_logprobs"][0][0][1] == out["output_ids"][0]  # greedy: the top choice was taken
    inp = meta["input_token_logprobs"]
    assert len(inp) == n and inp[0][0] is None
    assert [e[0] for e in inp[1:]] == pytest.approx([logp[j - 1, ids[j]].item() for j in range(1, n)], abs=1e-4)


def test_prompt_logprobs_bypass_the_cache_but_match(engine: sgl.Engine) -> None:
    ids = engine.tokenizer.encode("A shared prefix that will be cached first, then asked for logprobs")
    engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1})
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1}, return_logprob=True,
                          logprob_start_len=3)
    assert len(out["meta_info"]["input_token_logprobs"]) == len(ids) - 3


def test_n_choices_share_the_prompt_through_the_cache(engine: sgl.Engine) -> None:
    prompt = "A long shared system prompt about many things " * 4
    outs = engine.generate(prompt, {"max_new_tokens": 4, "temperature": 1.0, "n": 4})
    assert isinstance(outs, list) and len(outs) == 4
    prompt_len = outs[0]["meta_info"]["prompt_tokens"]
    cached = sorted(o["meta_info"]["cached_tokens"] for o in outs)
    assert cached[0] < prompt_len // 2 and all(c >= prompt_len - 1 for c in cached[1:])


def test_seeded_sampling_reproduces_whatever_the_batch(engine: sgl.Engine) -> None:
    seeded = {"max_new_tokens": 12, "temperature": 1.0, "seed": 1234, "ignore_eos": True}
    alone = engine.generate("Seeded prompt", seeded)["output_ids"]
    other = {"max_new_tokens": 12, "temperature": 1.0, "ignore_eos": True}
    batch = engine.generate(["Other one", "Seeded prompt", "Yet another"], [other, seeded, other])
    assert batch[1]["output_ids"] == alone
    unseeded = [engine.generate("Seeded prompt", other)["output_ids"] for _ in range(3)]
    assert any(u != alone for u in unseeded)


def test_shared_prefix_workload_reports_cached_tokens(engine: sgl.Engine) -> None:
    system = "You are a helpful assistant who answers briefly and precisely. " * 3
    first = engine.generate(system + "Question one?", {"max_new_tokens": 2})
    second = engine.generate(system + "Question two?", {"max_new_tokens": 2})
    assert first["meta_info"]["cached_tokens"] < second["meta_info"]["cached_tokens"]
    assert second["meta_info"]["cached_tokens"] >= len(engine.tokenizer.encode(system)) - 2


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"prompt": ""}, "empty"),
        ({"prompt": "x", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
        ({"prompt": "x", "sampling_params": {"temperature": -0.5}}, "temperature"),
        ({"prompt": "x", "sampling_params": {"top_p": 0.0}}, "top_p"),
        ({"prompt": "x", "sampling_params": {"top_p": 1.5}}, "top_p"),
        ({"prompt": "x", "sampling_params": {"no_such_param": 1}}, "no_such_param"),
        ({"prompt": "word " * 2000}, "context length"),
        ({"input_ids": [10**9]}, "vocabulary"),
    ],
)
def test_bad_input_raises_value_error_and_engine_keeps_serving(engine: sgl.Engine, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        engine.generate(**kwargs)
    ok = engine.generate("still alive", {"max_new_tokens": 2, "ignore_eos": True})
    assert ok["meta_info"]["completion_tokens"] == 2


def test_abort_request_finishes_with_abort(engine: sgl.Engine) -> None:
    async def run() -> dict:
        gen = await engine.async_generate("abort me", {"max_new_tokens": 900, "ignore_eos": True},
                                          stream=True, rid="to-abort")
        last = None
        async for chunk in gen:
            last = chunk
            if len(chunk["output_ids"]) >= 2:
                engine.abort_request("to-abort")
        return last

    last = asyncio.new_event_loop().run_until_complete(run())
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    info = settled_info(engine)
    assert info["locked_tokens"] == 0 and info["num_running_reqs"] == 0
