"""--enable-mixed-chunk under a steady arrival of long prompts: what each iteration runs, step by step.

The scheduler side of issue 23's mixed-chunk queue build-up: each forward is recorded (mode, prompt tokens, decode
rows) and each step's outputs are read, so a chunk budget eaten by decodes, a chunked request blocking the queue,
extra decode-only steps or tokens streamed late would show here as a number, not as a GPU timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest

from sgl.core.config import ServerArgs
from sgl.core.ipc import GenerateReq
from sgl.core.runtime import build_runtime
from sgl.core.sampling.params import SamplingParams
from sgl.core.scheduler.req import ReqStage
from sgl.core.scheduler.scheduler import Scheduler

PROMPT, OUTPUT, CHUNK = 64, 24, 32  # two chunks per prompt, as 1024-token prompts at --chunked-prefill-size 512


class Forward(NamedTuple):
    mode: str
    prompt_tokens: int  # new tokens of requests still in prefill
    decode_rows: int  # running requests that decode in this forward
    waiting: int  # requests queued when it was planned (the chunked one not counted)


def _scheduler(model: Path, **kw: Any) -> tuple[Scheduler, list[Forward]]:
    args = ServerArgs(model_path=str(model), backend="cpu", debug_invariants=True, max_total_tokens=8192,
                      context_length=512, enable_mixed_chunk=True, chunked_prefill_size=CHUNK, **kw)
    s = build_runtime(args).scheduler
    forwards: list[Forward] = []
    launch = s.executor.launch

    def recording_launch(batch: Any, *a: Any, **k: Any) -> Any:
        decodes = sum(r.stage is ReqStage.DECODE for r in batch.reqs)
        prompt = sum(e for r, e in zip(batch.reqs, batch.extend_lens) if r.stage is not ReqStage.DECODE)
        forwards.append(Forward(batch.mode.value, prompt, decodes * batch.steps, len(s.waiting)))
        return launch(batch, *a, **k)

    s.executor.launch = recording_launch  # type: ignore[method-assign]
    return s, forwards


def _request(i: int) -> GenerateReq:
    ids = [(11 * j + 7 * i) % 1500 + 5 for j in range(PROMPT)]
    return GenerateReq(f"r{i}", ids, SamplingParams(max_new_tokens=OUTPUT, temperature=0.0, ignore_eos=True),
                       stream=True)


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlap"])
def test_mixed_chunk_with_a_backlog_runs_a_full_chunk_and_every_decode_each_step(
    demo_model_dir: Path, overlap: bool
) -> None:
    """Two arrivals per step (more than one chunk per step can absorb): while prompts wait, every forward is one
    MIXED step with a whole chunk of prompt tokens and every running request's decode, no decode runs on its own,
    the chunked request advances a chunk per step, and each running request streams its token in that very step."""
    s, forwards = _scheduler(demo_model_dir, force_overlap_schedule=overlap)
    sent = 0
    while sent < 16 or not s.is_idle:
        for _ in range(2 if sent < 16 else 0):
            s.add_request(_request(sent))
            sent += 1
        running = {r.rid for r in s.running}
        n = len(forwards)
        batch = s.step()
        new = {o.rid: len(o.new_token_ids) for o in batch.outputs}
        new.update((rid, len(ids)) for rid, ids in batch.deltas)
        if len(forwards) == n + 1 and forwards[-1].mode == "mixed":
            # NOTE: the decodes of a mixed step reach their clients in the outputs of that step
            assert all(new.get(rid) == 1 for rid in running), (len(forwards), running, new)
    backlog = [f for f in forwards if f.waiting > 0]
    assert len(backlog) >= 8
    assert all(f.prompt_tokens == CHUNK for f in backlog), backlog
    # NOTE: the first prompt's two chunks find nothing running yet
    assert [f.mode for f in backlog[:2]] == ["extend", "extend"]
    assert all(f.mode == "mixed" for f in backlog[2:]), backlog
    # 16 prompts of two chunks each: 32 prompt forwards in all, none spent elsewhere
    assert sum(f.prompt_tokens > 0 for f in forwards) == 16 * PROMPT // CHUNK
    assert s.counters.mixed_steps == 16 * PROMPT // CHUNK - 2


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlap"])
def test_mixed_chunk_keeps_up_with_arrivals_below_one_prompt_per_two_steps(demo_model_dir: Path, overlap: bool) -> None:
    """One arrival every three steps, where a prompt needs two chunks: the queue never holds more than the one
    request that just arrived, and no prompt waits a step behind another."""
    s, forwards = _scheduler(demo_model_dir, force_overlap_schedule=overlap)
    it = sent = 0
    most_waiting = 0
    while sent < 12 or not s.is_idle:
        if sent < 12 and it % 3 == 0:
            s.add_request(_request(sent))
            sent += 1
        most_waiting = max(most_waiting, len(s.waiting))
        s.step()
        it += 1
    assert most_waiting <= 1
    assert all(f.waiting == 0 for f in forwards if f.prompt_tokens == 0), forwards
