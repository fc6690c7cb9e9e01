"""sgl.Engine where an event loop is already running (a Jupyter cell runs inside one): the sync API still works."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

import sgl
from tests.core.engine_utils import GREEDY, PROMPTS, make_engine, settled_info


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path):  # type: ignore[no-untyped-def]
    with make_engine(demo_model_dir) as eng:
        yield eng


def _in_running_loop(fn: Any) -> Any:
    """Calls ``fn`` from a coroutine, as a notebook cell does: a loop is running on this thread meanwhile."""

    async def cell() -> Any:
        asyncio.get_running_loop()
        return fn()

    return asyncio.run(cell())


def test_generate_inside_a_running_loop_gives_the_same_tokens(engine: sgl.Engine) -> None:
    outside = engine.generate(PROMPTS[:3], GREEDY)
    inside = _in_running_loop(lambda: engine.generate(PROMPTS[:3], GREEDY))
    assert [o["output_ids"] for o in inside] == [o["output_ids"] for o in outside]
    one = _in_running_loop(lambda: engine.generate(PROMPTS[0], GREEDY))
    assert one["output_ids"] == outside[0]["output_ids"]


def test_streaming_generate_inside_a_running_loop(engine: sgl.Engine) -> None:
    full = engine.generate(PROMPTS[1], GREEDY)
    chunks = _in_running_loop(lambda: list(engine.generate(PROMPTS[1], GREEDY, stream=True)))
    assert len(chunks) >= 2 and chunks[-1]["output_ids"] == full["output_ids"]


def test_async_generate_is_awaited_on_the_callers_loop(engine: sgl.Engine) -> None:
    full = engine.generate(PROMPTS[2], GREEDY)

    async def cell() -> tuple[Any, list[Any], list[Any]]:
        one = await engine.async_generate(PROMPTS[2], GREEDY)
        many = await asyncio.gather(*(engine.async_generate(PROMPTS[2], GREEDY) for _ in range(3)))
        chunks = [c async for c in await engine.async_generate(PROMPTS[2], GREEDY, stream=True)]
        return one, many, chunks

    one, many, chunks = asyncio.run(cell())
    assert one["output_ids"] == full["output_ids"]
    assert [m["output_ids"] for m in many] == [full["output_ids"]] * 3
    assert chunks[-1]["output_ids"] == full["output_ids"]


def test_a_stream_left_early_aborts_its_request(engine: sgl.Engine) -> None:
    params = {**GREEDY, "max_new_tokens": 200}

    def take_two() -> int:
        stream = engine.generate(PROMPTS[3], params, stream=True)
        got = [next(stream), next(stream)]
        stream.close()
        return len(got[-1]["output_ids"])

    assert _in_running_loop(take_two) < 200
    info = settled_info(engine)
    assert (info["num_running_reqs"], info["locked_tokens"], info["request_owned_tokens"]) == (0, 0, 0)


def test_shutdown_stops_the_engine_threads(demo_model_dir: Path) -> None:
    def engine_threads() -> int:
        return sum(t.name in ("sgl-engine-loop", "sgl-scheduler") for t in threading.enumerate())

    before = engine_threads()
    eng = make_engine(demo_model_dir)
    assert engine_threads() == before + 2
    assert _in_running_loop(lambda: eng.generate("hi", {"max_new_tokens": 2}))["meta_info"]["completion_tokens"] == 2
    eng.shutdown()
    assert engine_threads() == before
    with pytest.raises(RuntimeError, match="shut down"):
        eng.generate("hi")
