"""A request that is not streamed is detokenized once at its end; its text must be the streamed request's text."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from sgl.core.demo_model import write_demo_model
from sgl.core.ipc import BatchOutput, FinishReason, GenerateReq, ReqOutput
from sgl.core.request_input import ModelLimits, PreparedRequest
from sgl.core.request_manager import RequestManager
from sgl.core.sampling.params import SamplingParams
from sgl.core.tokenizer.tokenizer import Tokenizer

TEXT = "Hello 世界! Café 🦑🪐 👩‍💻 — done. 한국어 ok"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(write_demo_model(Path(tmp_path_factory.mktemp("demo")) / "model", num_layers=1))


def _run(tok: Tokenizer, ids: list[int], chunks: list[int], fin: FinishReason, params: SamplingParams,
         stream: bool) -> tuple[str, list[int], int]:
    """Feeds ``ids`` in ``chunks`` as the scheduler would; returns the final text and ids and the results yielded."""
    prompt = tok.encode("Say:", add_special_tokens=False)

    async def go() -> tuple[str, list[int], int]:
        mgr = RequestManager(tok, ModelLimits(context_len=4096, vocab_size=tok.vocab_size), lambda msg: None)
        req = PreparedRequest("r", prompt, params, (GenerateReq("r", prompt, params, stream=stream),),
                              False, False, stream)
        gen = mgr.generate(req)
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0)
        # NOTE: as from the scheduler: the finishing output carries the last token (a stop token among them)
        pos, outs = 0, []
        for size in chunks:
            new = ids[pos : pos + size]
            pos += len(new)
            outs.append(ReqOutput("r", new, fin if pos == len(ids) else None, len(prompt), pos, 0))
            if pos == len(ids):
                break
        for out in outs:
            mgr.on_output(BatchOutput([out]))
        results = [await first]
        async for r in gen:
            results.append(r)
        return results[-1][0].text, results[-1][0].output_ids, len(results)

    return asyncio.run(go())


@pytest.mark.parametrize("seed", range(12))
def test_unstreamed_text_equals_streamed_text(tok: Tokenizer, seed: int) -> None:
    rng = random.Random(seed)
    ids = tok.encode(TEXT, add_special_tokens=False)
    ids = ids + [rng.randrange(300) for _ in range(rng.randrange(0, 12))]  # byte-level ids: broken UTF-8 too
    chunks = [rng.randint(1, 3) for _ in ids]  # sums past len(ids): the last output takes what is left
    cases = [
        (FinishReason("length"), SamplingParams()),
        (FinishReason("stop", ids[-1]), SamplingParams()),  # a stop token, trimmed from the text
        (FinishReason("stop", ids[-1]), SamplingParams(no_stop_trim=True)),
        (FinishReason("stop", "界!"), SamplingParams(stop=["界!"])),  # a stop string, cut from the text
    ]
    for fin, params in cases:
        streamed = _run(tok, ids, chunks, fin, params, stream=True)
        unstreamed = _run(tok, ids, chunks, fin, params, stream=False)
        assert unstreamed[:2] == streamed[:2] and unstreamed[1] == ids
        assert unstreamed[2] == 1
