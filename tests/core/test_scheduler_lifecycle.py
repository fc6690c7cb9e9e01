"""Driving the Scheduler step by step: aborts at every stage free everything; the KV accounting always holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgl.core.config import ServerArgs
from sgl.core.ipc import GenerateReq
from sgl.core.runtime import build_runtime
from sgl.core.sampling.params import SamplingParams
from sgl.core.scheduler.req import ReqStage
from sgl.core.scheduler.scheduler import Scheduler


def make_scheduler(model: Path, **kw: object) -> Scheduler:
    args = ServerArgs(model_path=str(model), backend="cpu", debug_invariants=True, max_total_tokens=2048,
                      context_length=512, **kw)  # type: ignore[arg-type]
    return build_runtime(args).scheduler


def req(rid: str, n_prompt: int, max_new: int = 20) -> GenerateReq:
    ids = [(7 * i + len(rid)) % 200 + 5 for i in range(n_prompt)]
    return GenerateReq(rid, ids, SamplingParams(max_new_tokens=max_new, temperature=0.0, ignore_eos=True))


def assert_idle_and_whole(s: Scheduler) -> None:
    assert s.is_idle
    s.check_invariant()
    assert s.state.cache.protected_size() == 0
    assert s.state.allocator.available_size() + s.state.cache.evictable_size() == s.state.allocator.size


@pytest.mark.parametrize("disable_radix_cache,overlap", [(False, False), (True, False), (False, True)])
def test_abort_at_every_stage_frees_everything(demo_model_dir: Path, disable_radix_cache: bool, overlap: bool) -> None:
    s = make_scheduler(demo_model_dir, chunked_prefill_size=16, disable_radix_cache=disable_radix_cache,
                       force_overlap_schedule=overlap)
    s.add_request(req("waiting", 10))
    s.abort("waiting")
    outs = s.step().outputs
    assert [o.finished.type for o in outs if o.rid == "waiting"] == ["abort"]
    assert_idle_and_whole(s)

    s.add_request(req("chunked", 60))
    s.step()
    assert s.chunked is not None and s.state.reqs["chunked"].stage is ReqStage.PREFILL
    s.abort("chunked")
    s.step()
    assert_idle_and_whole(s)

    s.add_request(req("decoding", 12))
    s.add_request(req("neighbour", 14, max_new=5))
    for _ in range(4):
        s.step()
    assert s.state.reqs["decoding"].stage is ReqStage.DECODE
    s.abort("decoding")
    finished = {}
    for _ in range(20):
        for o in s.step().outputs:
            if o.finished is not None:
                finished[o.rid] = o.finished.type
        if s.is_idle:
            break
    assert finished == {"decoding": "abort", "neighbour": "length"}
    assert_idle_and_whole(s)


def test_duplicate_request_id_is_refused_without_disturbing_the_first(demo_model_dir: Path) -> None:
    s = make_scheduler(demo_model_dir)
    s.add_request(req("same", 8, max_new=3))
    s.add_request(req("same", 8, max_new=3))
    results = []
    while True:
        results += [o for o in s.step().outputs if o.finished is not None]
        if s.is_idle:
            break
    assert sorted(o.finished.type for o in results) == ["abort", "length"]
    assert_idle_and_whole(s)


def test_flush_cache_empties_the_tree_only_when_idle(demo_model_dir: Path) -> None:
    s = make_scheduler(demo_model_dir)
    s.add_request(req("a", 30, max_new=2))
    assert not s.flush_cache()
    while not s.is_idle:
        s.step()
    assert s.state.cache.evictable_size() > 0
    assert s.flush_cache()
    assert s.state.cache.evictable_size() == 0
    assert s.state.allocator.available_size() == s.state.allocator.size


def test_kv_pool_that_cannot_fit_is_a_clear_error(demo_model_dir: Path) -> None:
    args = ServerArgs(model_path=str(demo_model_dir), backend="cpu", mem_fraction_static=0.001)
    with pytest.raises(MemoryError, match=r"weights take .* GiB, .* GiB is free"):
        build_runtime(args)


def test_a_prompt_larger_than_the_kv_pool_is_refused_at_the_edge(demo_model_dir: Path) -> None:
    """Such a prompt could never be admitted: it must be a ValueError, not a request that waits forever."""
    import sgl

    with sgl.Engine(model_path=str(demo_model_dir), backend="cpu", max_total_tokens=64) as engine:
        with pytest.raises(ValueError, match="KV pool holds only 64"):
            engine.generate(input_ids=list(range(10, 90)), sampling_params={"max_new_tokens": 4})
        assert engine.generate(input_ids=list(range(10, 40)), sampling_params={"max_new_tokens": 4})[
            "meta_info"]["completion_tokens"] == 4


def test_a_request_outgrowing_the_whole_pool_ends_with_an_abort_not_a_hang(demo_model_dir: Path) -> None:
    import sgl

    with sgl.Engine(model_path=str(demo_model_dir), backend="cpu", max_total_tokens=64, debug_invariants=True) as e:
        out = e.generate(input_ids=list(range(10, 50)), sampling_params={"max_new_tokens": 60, "ignore_eos": True})
        reason = out["meta_info"]["finish_reason"]
        assert reason["type"] == "abort" and "cannot hold" in reason["message"]
        info = e.get_server_info()
        assert info["available_tokens"] + info["evictable_tokens"] == 64 and info["locked_tokens"] == 0
