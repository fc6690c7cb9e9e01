"""A streamed request between its first token and its end is told of new ids by a TokenDelta (rid, ids) instead of a
whole ReqOutput; whatever else changes still sends a ReqOutput, and the request front ends with the same results."""

from __future__ import annotations

import asyncio
import pickle
import random
from pathlib import Path

import pytest

from sgl.api.metrics import Metrics
from sgl.core.demo_model import write_demo_model
from sgl.core.ipc import BatchOutput, FinishReason, GenerateReq, ReqOutput, TokenDelta
from sgl.core.request_input import ModelLimits, PreparedRequest
from sgl.core.request_manager import RequestManager
from sgl.core.sampling.params import SamplingParams
from sgl.core.tokenizer.tokenizer import Tokenizer
from tests.core.test_host_step_paths import make_req
from tests.core.test_scheduler_lifecycle import assert_idle_and_whole, make_scheduler

TEXT = "Hello 世界! Café 🦑🪐 — done. 한국어 ok"


def test_a_streamed_request_is_told_by_deltas_between_its_first_token_and_its_end() -> None:
    r = make_req(stream=True, max_new=5)
    kinds = []
    for step in range(5):
        r.output_ids.append(10 + step)
        if step == 4:
            r.finished_reason = FinishReason("length")
        out = r.take_output()
        kinds.append("delta" if isinstance(out, tuple) else "whole")
        if isinstance(out, tuple):
            assert out == ("r", [10 + step])
    assert kinds == ["whole", "delta", "delta", "delta", "whole"]
    unstreamed = make_req(stream=False, max_new=5)
    for step in range(5):
        unstreamed.output_ids.append(step)
        assert not isinstance(unstreamed.take_output(), tuple)


@pytest.mark.parametrize("change", ["logprob", "cached", "spec", "input_logprobs"])
def test_any_change_besides_new_ids_sends_a_whole_output(change: str) -> None:
    r = make_req(stream=True)
    r.output_ids.append(1)
    r.take_output()
    r.output_ids.append(2)
    if change == "logprob":
        r.pending_logprobs.append((-0.5, 2))
        r.pending_top_logprobs.append([])
    elif change == "cached":
        r.cached_tokens = 3  # a retracted request re-admitted over a cached prefix
    elif change == "spec":
        r.spec_verify_ct = 1
    else:
        r.input_logprobs = [(None, 1)]
    out = r.take_output()
    assert isinstance(out, ReqOutput) and out.new_token_ids == [2]
    r.output_ids.append(3)
    assert isinstance(r.take_output(), tuple) or change == "input_logprobs"  # told once, then deltas again


def test_batch_output_with_deltas_survives_pickling() -> None:
    msg = BatchOutput([ReqOutput("a", [1], None, 2, 1, 0)], [("b", [4, 5]), ("c", [6])])
    back = pickle.loads(pickle.dumps(msg))
    assert back == msg and back and not BatchOutput([])


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(write_demo_model(Path(tmp_path_factory.mktemp("demo")) / "model", num_layers=1))


def _stream(tok: Tokenizer, steps: list[list[int]], fin: FinishReason, params: SamplingParams,
            deltas: bool) -> list[tuple[str, list[int], int, int, object]]:
    """Streams ``steps`` (new ids per step) into a RequestManager, mid-stream steps as deltas or as whole outputs;
    returns each yielded result's text, ids, completion and cached counts and finish."""
    prompt = tok.encode("Say:", add_special_tokens=False)

    async def go() -> list[tuple[str, list[int], int, int, object]]:
        mgr = RequestManager(tok, ModelLimits(context_len=4096, vocab_size=tok.vocab_size), lambda msg: None)
        req = PreparedRequest("r", prompt, params, (GenerateReq("r", prompt, params, stream=True),), False, False, True)
        gen = mgr.generate(req)
        got = []
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0)
        done = 0
        for i, new in enumerate(steps):
            done += len(new)
            last = i == len(steps) - 1
            whole = ReqOutput("r", new, fin if last else None, len(prompt), done, 2)
            if deltas and 0 < i and not last:
                mgr.on_output(BatchOutput([], [("r", new)]))
            else:
                mgr.on_output(BatchOutput([whole]))
            got.append(await first if i == 0 else await gen.__anext__())
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
        return [(x.text, x.output_ids, x.meta.completion_tokens, x.meta.cached_tokens, x.meta.finish_reason)
                for [x] in got]

    return asyncio.run(go())


@pytest.mark.parametrize("seed", range(6))
def test_deltas_give_the_request_front_the_results_whole_outputs_give(tok: Tokenizer, seed: int) -> None:
    rng = random.Random(seed)
    ids = tok.encode(TEXT, add_special_tokens=False) + [rng.randrange(300) for _ in range(rng.randrange(8))]
    steps, pos = [], 0
    while pos < len(ids):
        n = rng.randint(1, 3)
        steps.append(ids[pos : pos + n])
        pos += n
    for fin, params in [(FinishReason("length"), SamplingParams()),
                        (FinishReason("stop", "界!"), SamplingParams(stop=["界!"]))]:
        want = _stream(tok, steps, fin, params, deltas=False)
        got = _stream(tok, steps, fin, params, deltas=True)
        assert got == want
        assert got[-1][1] == ids and got[-1][3] == 2


def test_the_scheduler_streams_a_decode_as_deltas(demo_model_dir: Path) -> None:
    s = make_scheduler(demo_model_dir)
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    s.add_request(GenerateReq("streamed", [5, 6, 7, 8], params, stream=True))
    s.add_request(GenerateReq("plain", [5, 6, 7, 9], params))
    told: dict[str, list[int]] = {"streamed": [], "plain": []}
    deltas: list[TokenDelta] = []
    while not s.is_idle:
        msg = s.step()
        deltas += msg.deltas
        for rid, ids in msg.deltas:
            told[rid] += ids
        for out in msg.outputs:
            told[out.rid] += out.new_token_ids
    assert [rid for rid, _ in deltas] == ["streamed"] * 4  # tokens 2 to 5; the first and the last come whole
    assert len(told["streamed"]) == len(told["plain"]) == 6
    assert_idle_and_whole(s)


def test_metrics_count_deltas_as_tokens_and_inter_token_gaps() -> None:
    m = Metrics()
    m.on_sent("r")
    m.on_outputs([ReqOutput("r", [1], None, 3, 1, 0)])
    m.on_outputs([], [("r", [2, 3])])
    m.on_outputs([ReqOutput("r", [4], FinishReason("length"), 3, 4, 0)])
    assert m.ttft.count == 1 and m.itl.count == 3 and m.e2e.count == 1
    assert m.generation_tokens == 4 and sum(n for _, n in m._recent) == 4
