"""Drafts left on the device (``sgl.core.speculative.drafts``): EAGLE's chain is laid out request-major without a host
read, the drafting code reads no token on the host, a verify step reads the device once, and requests whose sampling
penalises repeats (which need the drafts' values before sampling) keep plain decoding's tokens."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sgl.core.sampling.params import SamplingParams
from sgl.core.speculative.drafts import DeviceDrafts, chain_drafts, draft_rows
from sgl.core.speculative.verify import VerifyResult, draft_budget, may_draft, verify_drafts
from tests.core.engine_utils import PROMPTS, make_engine
from tests.speculative.eagle_drafts import write_mirroring_pair
from tests.speculative.oracle import ScriptedDrafts, run, runtime, with_feature

EAGLE_FILE = str(Path("sgl/plugins/speculative/eagle.py"))
VERIFY_FILE = str(Path("sgl/core/speculative/verify.py"))


def test_a_chain_whose_requests_stop_at_different_depths_is_laid_out_request_major() -> None:
    budgets = [3, 0, 1, 2]  # the second request drafts nothing; members index the requests that draft
    columns = [([0, 1, 2], torch.tensor([10, 20, 30])), ([0, 2], torch.tensor([11, 31])), ([0], torch.tensor([12]))]
    flat = chain_drafts(columns, budgets, pinned=False)
    assert flat.tolist() == [10, 11, 12, 20, 30, 31]
    assert DeviceDrafts(flat, budgets).split(flat.tolist()) == [[10, 11, 12], [], [20], [30, 31]]


def test_a_chain_of_equal_depths_is_the_columns_side_by_side() -> None:
    columns = [([0, 1], torch.tensor([1, 2])), ([0, 1], torch.tensor([3, 4])), ([0, 1], torch.tensor([5, 6]))]
    assert chain_drafts(columns, [3, 3], pinned=False).tolist() == [1, 3, 5, 2, 4, 6]


def test_draft_rows_skip_each_requests_last_token() -> None:
    assert draft_rows([2, 0, 3]) == [1, 2, 5, 6, 7]


class HostReads:
    """Counts, per (file, function), the calls that read a tensor's values on the host (``tolist``, ``item``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        for name in ("tolist", "item"):
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def read(t: torch.Tensor, *args: Any) -> Any:
            caller = sys._getframe(1).f_code
            self.calls[(caller.co_filename, caller.co_name)] += 1
            return original(t, *args)

        return read

    def count(self, file: str, function: str | None = None) -> int:
        return sum(n for (f, fn), n in self.calls.items() if f.endswith(file) and function in (None, fn))


def test_eagle_chain_drafting_reads_no_token_on_the_host_and_a_verify_step_reads_the_device_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU each host read waits for the device: the chain's drafts must reach the verify forward on the device
    and come home with the target's tokens. (The engine runs in this process, so its scheduler thread's reads are
    counted here.)"""
    target, mirror = write_mirroring_pair(tmp_path)
    engine = make_engine(target, speculative_algorithm="EAGLE", speculative_draft_model_path=str(mirror),
                         speculative_num_steps=3, disable_speculative_gate=True)
    try:
        engine.generate(PROMPTS[:1], {"temperature": 0.0, "max_new_tokens": 4, "ignore_eos": True})  # warm
        before = engine.get_server_info()
        reads = HostReads(monkeypatch)
        engine.generate(PROMPTS[:1], {"temperature": 0.0, "max_new_tokens": 24, "ignore_eos": True})
        monkeypatch.undo()
        after = engine.get_server_info()
    finally:
        engine.shutdown()
    steps = after["spec_verify_steps"] - before["spec_verify_steps"]
    assert after["spec_accepted_tokens"] > before["spec_accepted_tokens"] and steps > 0
    assert reads.count(EAGLE_FILE) == 0, reads.calls
    assert reads.count(VERIFY_FILE, "_sample_positions") == steps, reads.calls
    assert reads.count(VERIFY_FILE, "run_verify") == reads.count(VERIFY_FILE, "verify_forward") == 0, reads.calls


class ScriptedDeviceDrafts(ScriptedDrafts):
    """The scripted drafts handed to verification as ``DeviceDrafts``, as a draft model on the device would."""

    def decode_step(self, batch: Any, state: Any, executor: Any) -> VerifyResult | None:
        drafts = []
        for r in batch.reqs:
            k = draft_budget(r, self.k, executor.runner.context_len) if may_draft(r, executor) else 0
            drafts.append(list(self.script.get(r.rid, [])[len(r.output_ids) : len(r.output_ids) + k]))
        on_device = DeviceDrafts(torch.tensor([t for d in drafts for t in d], dtype=torch.int64),
                                 [len(d) for d in drafts])
        result = verify_drafts(batch, state, executor, on_device)
        if result is not None:
            self.drafted += sum(result.drafted)
            self.accepted += sum(len(t) - 1 for t in result.tokens)
        return result


@pytest.mark.parametrize("penalty", [{"repetition_penalty": 2.0}, {"frequency_penalty": 2.0}])
def test_device_drafts_of_penalised_requests_are_sampled_after_the_drafts_before_them(
    demo_model_dir: Path, penalty: dict[str, Any]
) -> None:
    """A penalty counts the drafts before each verified position, so their values come home before sampling (a
    request without one samples from placeholders of the right length): drafts that are plain decoding's own tokens
    are all accepted, in a batch mixing penalised and plain requests."""
    rt = runtime(demo_model_dir)
    params = [SamplingParams(max_new_tokens=24, temperature=0.0, ignore_eos=True, **(penalty if i % 2 else {}))
              for i in range(4)]
    reqs = [(f"r{i}", [(11 * j + 5 * i) % 200 + 5 for j in range(6 + 3 * i)], p) for i, p in enumerate(params)]
    plain = run(rt.scheduler, reqs)
    oracle = ScriptedDeviceDrafts({rid: ids for rid, (ids, _) in plain.items()}, k=4)
    assert run(with_feature(rt, oracle), reqs) == plain
    assert oracle.drafted > 0 and oracle.accepted == oracle.drafted
