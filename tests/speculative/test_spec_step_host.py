"""A speculative decode step's host work, which on a GPU at batch 1 is time the device waits: its inputs travel in few
transfers (each costs a pinned staging buffer and a copy launch), equal-length device drafts reach the verify batch
without a row index, and a verified batch frees its rejected drafts in one allocator call; with greedy tokens those of
plain decoding all the same."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from sgl.core import transfer
from sgl.core.sampling.params import SamplingParams
from sgl.core.speculative.drafts import DeviceDrafts, draft_rows
from sgl.core.speculative.verify import place_drafts
from sgl.core.transfer import lists_to_device
from tests.core.engine_utils import PROMPTS, make_engine, plain_greedy_ids
from tests.speculative.eagle_drafts import write_mirroring_pair
from tests.speculative.oracle import ScriptedDrafts, run, runtime, with_feature


def test_lists_of_any_lengths_travel_as_one_buffer_and_come_back_in_order() -> None:
    lists = [[3, 1], [], [7, 8, 9], [2**40]]
    got = lists_to_device(lists, torch.int64, torch.device("cpu"), pinned=False)
    assert [t.tolist() for t in got] == lists and all(t.dtype == torch.int64 for t in got)
    assert [t.tolist() for t in lists_to_device([[], []], torch.int64, torch.device("cpu"), False)] == [[], []]


@pytest.mark.parametrize("counts", [[3], [2, 2, 2], [3, 0, 1], [0, 2]])
def test_device_drafts_land_on_the_rows_after_each_requests_last_token(counts: list[int]) -> None:
    """Equal counts take one strided copy, others a row index: both put request i's drafts right after its last
    token, as the index of ``draft_rows`` says."""
    total = sum(counts)
    drafts = DeviceDrafts(torch.arange(100, 100 + total), counts)
    ids = torch.zeros(total + len(counts), dtype=torch.int64)
    place_drafts(ids, drafts, pinned=False)
    want = torch.zeros_like(ids)
    want[torch.tensor(draft_rows(counts), dtype=torch.int64)] = drafts.tokens
    assert ids.tolist() == want.tolist()


class Transfers:
    """Counts calls of ``sgl.core.transfer.to_device`` (every host-to-device copy of the engine goes through it, by
    itself or through ``rows_to_device``/``lists_to_device``) while ``counting`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.counting = False
        original = transfer.to_device

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += self.counting
            return original(*args, **kwargs)

        for module in list(sys.modules.values()):
            if getattr(module, "to_device", None) is original and (module.__name__ or "").startswith("sgl."):
                monkeypatch.setattr(module, "to_device", counted)

    @contextmanager
    def around(self, owner: Any, name: str, calls: list[int]) -> Iterator[None]:
        inner: Callable[..., Any] = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before, self.counting = self.calls, True
            try:
                return inner(*args, **kwargs)
            finally:
                self.counting = False
                calls.append(self.calls - before)

        setattr(owner, name, wrapped)
        try:
            yield
        finally:
            setattr(owner, name, inner)


def test_an_eagle_step_at_batch_1_sends_its_inputs_in_four_transfers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request, a chain of 3: the draft head's chained steps with their slots for the request table (one transfer
    for all), the verify batch with its slots for the table, its sampling rows, and the next step's catch-up extend,
    launched right after the verify. (It was 12: a transfer per list of each batch, and one for the verify slots'
    table write.)"""
    target, mirror = write_mirroring_pair(tmp_path)
    params = {"temperature": 0.0, "max_new_tokens": 24, "ignore_eos": True}
    plain = plain_greedy_ids(target, PROMPTS[:1], params)
    engine = make_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                         speculative_num_steps=3, disable_speculative_gate=True)
    try:
        engine.generate(PROMPTS[:1], {**params, "max_new_tokens": 4})  # warm
        spec = engine.runtime.scheduler.speculative
        counts: list[int] = []
        with Transfers(monkeypatch).around(spec, "decode_step", counts):
            out = [o["output_ids"] for o in engine.generate(PROMPTS[:1], params)]
        info = engine.get_server_info()
    finally:
        engine.shutdown()
    assert out == plain
    assert info["spec_accepted_tokens"] > 0 and len(counts) > 2
    full = counts[:-2]  # NOTE: the last steps may draft less (max_new_tokens)
    assert max(full) <= 4, counts


def test_a_verified_batch_frees_its_rejected_drafts_in_one_allocator_call(demo_model_dir: Path) -> None:
    """Four requests, every second draft spoiled: rejections in most rows of most steps, one free per step (each
    free costs a dozen small host ops whatever its size), and plain decoding's tokens with the pool whole after."""
    rt = runtime(demo_model_dir)
    params = SamplingParams(max_new_tokens=20, temperature=0.0, ignore_eos=True)
    reqs = [(f"r{i}", [(7 * j + 3 * i) % 200 + 5 for j in range(5 + 2 * i)], params) for i in range(4)]
    plain = run(rt.scheduler, reqs)
    oracle = ScriptedDrafts({rid: ids for rid, (ids, _) in plain.items()}, k=3,
                            corrupt=lambda pos, tok: tok if pos % 2 else tok + 1)
    spec = with_feature(rt, oracle)
    allocator = spec.state.allocator
    frees: list[int] = []
    free = allocator.free
    allocator.free = lambda slots: (frees.append(int(slots.numel())), free(slots))[1]  # type: ignore[method-assign]
    steps: list[int] = []
    process = spec.results.process_verify

    def counted(batch: Any, result: Any) -> None:
        before = len(frees)
        process(batch, result)
        steps.append(len(frees) - before)

    spec.results.process_verify = counted  # type: ignore[method-assign]
    assert run(spec, reqs) == plain
    assert oracle.verifies > 0 and oracle.accepted < oracle.drafted
    assert steps and max(steps) == 1, steps


def test_a_single_requests_catch_up_reads_its_features_without_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At batch 1 the waiting features are one tensor already: the catch-up extend reads it as it is (a concatenation
    of one tensor is a copy, a kernel launch on a GPU)."""
    from sgl.plugins.speculative import eagle

    target, mirror = write_mirroring_pair(tmp_path)
    cats: list[int] = []
    cat = torch.cat

    def counted(tensors: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if sys._getframe(1).f_code.co_name == "_catch_up":
            cats.append(len(tensors))
        return cat(tensors, *args, **kwargs)

    engine = make_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                         speculative_num_steps=3, disable_speculative_gate=True)
    try:
        monkeypatch.setattr(eagle.torch, "cat", counted)
        engine.generate(PROMPTS[:1], {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True})
        monkeypatch.undo()
        steps = engine.get_server_info()["spec_verify_steps"]
    finally:
        engine.shutdown()
    assert steps > 0 and cats == [], cats


@pytest.mark.parametrize("topk", [1, 2])
def test_eagle_with_a_device_table_apart_from_its_host_mirror_keeps_plain_greedy_tokens(
    tmp_path: Path, topk: int
) -> None:
    """On a device the request table has a host mirror, and a speculative step writes its verify slots into each
    (the mirror when it allocates them; the device table from the verify batch's and the draft inputs' transfers).
    Here the CPU table gets a mirror of its own, so a slot the device table missed changes what the target attends
    to (its tokens) or what the draft head does (what it drafts, so what is accepted); chains and trees (whose table
    columns are node order, not positions)."""
    target, mirror = write_mirroring_pair(tmp_path)
    params = {"temperature": 0.0, "max_new_tokens": 20, "ignore_eos": True}
    plain = plain_greedy_ids(target, PROMPTS[:3], params, disable_radix_cache=True)
    tree = {"speculative_eagle_topk": 2, "speculative_num_draft_tokens": 5} if topk > 1 else {}
    runs = []
    for apart in (False, True):
        engine = make_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                             speculative_num_steps=3, disable_speculative_gate=True, disable_radix_cache=True, **tree)
        try:
            pool = engine.runtime.scheduler.runner.req_to_token_pool
            if apart:
                pool.host = pool.req_to_token.clone()
            assert pool.on_host is not apart
            out = [o["output_ids"] for o in engine.generate(PROMPTS[:3], params)]
            runs.append((out, engine.get_server_info()["spec_accepted_tokens"]))
        finally:
            engine.shutdown()
    assert runs[0][1] > 0
    assert runs[1] == runs[0] and runs[0][0] == plain


@pytest.mark.parametrize("batch", [1, 3])
def test_the_next_catch_up_runs_before_the_verified_tokens_are_applied_and_changes_nothing(
    tmp_path: Path, batch: int
) -> None:
    """Right after a verify the head's next catch-up extend (and d1) is launched, before the scheduler applies the
    tokens and frees slots, so on a GPU the device runs it while the host does that work; the next step drafts from
    it. Drafts, acceptance and tokens are those of a run that catches up at the start of each step."""
    target, mirror = write_mirroring_pair(tmp_path)
    params = [{"temperature": 0.0, "max_new_tokens": n, "ignore_eos": True} for n in (24, 17, 30)[:batch]]
    runs = []
    for early in (False, True):
        engine = make_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                             speculative_num_steps=3, disable_speculative_gate=True, disable_radix_cache=True)
        try:
            sched = engine.runtime.scheduler
            spec = sched.speculative
            order: list[str] = []
            if not early:
                spec._catch_up_early = lambda *a: None
            forward, process, waiting = spec.draft.forward, sched.results.process_verify, spec._waiting_rows

            def draft_forward(fb: Any, forward: Any = forward, order: list[str] = order) -> Any:
                order.append(fb.forward_mode.value)
                return forward(fb)

            def process_verify(*a: Any, process: Any = process, order: list[str] = order) -> Any:
                order.append("apply")
                return process(*a)

            def waiting_rows(*a: Any, waiting: Any = waiting, order: list[str] = order) -> Any:
                order.append("catch up from the features")
                return waiting(*a)

            spec.draft.forward, sched.results.process_verify = draft_forward, process_verify
            spec._waiting_rows = waiting_rows
            out = [o["output_ids"] for o in engine.generate(PROMPTS[:batch], params)]
            info = engine.get_server_info()
        finally:
            engine.shutdown()
        runs.append((out, info["spec_drafted_tokens"], info["spec_accepted_tokens"], order))
    assert runs[0][:3] == runs[1][:3] and runs[0][2] > 0
    lazy, eager = runs[0][3], runs[1][3]
    applies = lazy.count("apply")
    # every step but the first (and, at the end, those whose requests are about to finish) starts from the early one
    assert lazy.count("catch up from the features") == applies
    assert eager.count("catch up from the features") <= 3 + batch, eager
    # the early catch-up (an extend) comes between a verify and the application of its tokens
    pairs = [eager[i - 1 : i + 1] for i, x in enumerate(eager) if x == "apply"]
    assert sum(p == ["extend", "apply"] for p in pairs) >= applies - 3 - batch, eager


def test_the_probes_transfer_count_sees_every_copy_and_puts_the_bindings_back() -> None:
    """``spec_host_probe``'s ``transfers_per_step``: a copy made through a module's own binding of ``to_device``
    (as ``from sgl.core.transfer import to_device`` gives it) or through a helper counts; after the block, none."""
    from benchmarks.spec_host_probe import counting_transfers
    from sgl.core.runner import input_prep

    cpu = torch.device("cpu")
    original = transfer.to_device
    with counting_transfers() as count:
        input_prep.to_device(torch.zeros(2), cpu, False)
        lists_to_device([[1], [2, 3]], torch.int64, cpu, False)
        transfer.rows_to_device([[1, 2]], torch.int64, cpu, False)
    assert count.calls == 3
    assert input_prep.to_device is original and transfer.to_device is original
    input_prep.to_device(torch.zeros(2), cpu, False)
    assert count.calls == 3


def test_an_ended_request_leaves_no_early_catch_up_behind(tmp_path: Path) -> None:
    """A catch-up launched right after a verify whose tokens then end the request (a stop token) serves no step: it
    is dropped on release, and with it the request it holds."""
    target, mirror = write_mirroring_pair(tmp_path)
    engine = make_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                         speculative_num_steps=3, disable_speculative_gate=True, disable_radix_cache=True)
    try:
        spec = engine.runtime.scheduler.speculative
        params = {"temperature": 0.0, "max_new_tokens": 30, "ignore_eos": True}
        out = engine.generate(PROMPTS[:1], params)[0]["output_ids"]
        stop = next(t for t in out[12:] if t not in out[:12])  # its first appearance comes well after a few verifies
        ended = engine.generate(PROMPTS[:1], {**params, "stop_token_ids": [stop]})[0]["output_ids"]
        assert len(ended) < len(out)
        assert spec._early is None
    finally:
        engine.shutdown()
