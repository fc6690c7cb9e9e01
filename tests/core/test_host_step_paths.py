"""The decode step's host paths rewritten for large batches give what the plain per-row code gave.

``host_rows`` (an ``array``-built tensor) against ``torch.tensor``; ``SamplingBatchInfo.build`` (one pass, builders
gated) against the per-field formulas it replaced; ``Req.take_output`` (checked before slicing) against the order it
had.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from sgl.core.ipc import FinishReason, GenerateReq, ReqOutput, TokenDelta
from sgl.core.sampling.batch_info import (
    SamplingBatchInfo,
    _build_logit_bias,
    _build_min_tokens_mask,
    step_seed,
)
from sgl.core.sampling.params import SamplingParams
from sgl.core.sampling.penalties import build_penalties
from sgl.core.scheduler.req import Req
from sgl.core.transfer import host_rows

VOCAB = 64


def same(a: Any, b: Any) -> bool:
    """Deep equality over tensors (dtype, shape, values), NamedTuples, dataclasses and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32, torch.float64])
def test_host_rows_equals_torch_tensor_over_random_rows(dtype: torch.dtype) -> None:
    rng = random.Random(7)
    for _ in range(200):
        n, width = rng.randint(1, 6), rng.randint(1, 40)
        floats = dtype.is_floating_point
        rows: list[list[Any]] = [
            [rng.uniform(-1e3, 1e3) if floats and rng.random() < 0.7 else rng.randint(-2**30, 2**30)
             for _ in range(width)]
            for _ in range(n)
        ]
        if rng.random() < 0.2:
            rows[0][0] = rng.random() < 0.5  # a bool, as the sampling rows carry
        if not floats and rng.random() < 0.2:
            rows[-1][-1] = 2.5  # a float among ints: torch truncates it, array refuses and torch.tensor decides
        got, want = host_rows(rows, dtype), torch.tensor(rows, dtype=dtype)
        assert same(got, want), (rows, got, want)


def test_host_rows_keeps_torch_errors_and_empty_shapes() -> None:
    with pytest.raises(ValueError):
        host_rows([[1, 2], [3]], torch.int64)
    assert same(host_rows([], torch.int64), torch.tensor([], dtype=torch.int64))
    assert same(host_rows([[], []], torch.float32), torch.tensor([[], []], dtype=torch.float32))
    assert same(host_rows([[True, False]], torch.bool), torch.tensor([[True, False]]))


def reference_build(params: Sequence[SamplingParams], output_ids: Sequence[Sequence[int]],
                    prompt_ids: Sequence[Sequence[int]], eos_ids: Sequence[set[int]],
                    step_seeds: Sequence[int | None] | None) -> SamplingBatchInfo:
    """SamplingBatchInfo.build as it was: one list per field, every optional builder called."""
    greedy = [p.is_greedy for p in params]
    sampling = [not g for g in greedy]
    top_ks = [p.top_k if 0 < p.top_k < VOCAB else VOCAB for p in params]
    top_ps = [p.top_p for p in params]
    min_ps = [p.min_p for p in params]
    if step_seeds is not None:
        row_seeds = tuple(s if smp else None for s, smp in zip(step_seeds, sampling))
    else:
        row_seeds = tuple(step_seed(p.seed, len(out)) if p.seed is not None and smp else None
                          for p, out, smp in zip(params, output_ids, sampling))
    packed = torch.tensor([[1.0 if g else p.temperature for p, g in zip(params, greedy)], top_ps, min_ps,
                           [float(k) for k in top_ks], [float(g) for g in greedy]], dtype=torch.float32)
    return SamplingBatchInfo(
        temperatures=packed[0].view(-1, 1), top_ps=packed[1], top_ks=packed[3].to(torch.int64), min_ps=packed[2],
        is_greedy=packed[4] > 0.5, all_greedy=all(greedy),
        need_top_p=any(p < 1.0 and s for p, s in zip(top_ps, sampling)),
        need_top_k=any(k < VOCAB and s for k, s in zip(top_ks, sampling)),
        need_min_p=any(m > 0.0 and s for m, s in zip(min_ps, sampling)), vocab_size=VOCAB,
        penalties=build_penalties(params, output_ids, prompt_ids, VOCAB, "cpu"),
        logit_bias=_build_logit_bias(params, VOCAB, "cpu"),
        min_tokens_mask=_build_min_tokens_mask(params, output_ids, eos_ids, VOCAB, "cpu"), row_seeds=row_seeds,
    )


def random_params(rng: random.Random) -> SamplingParams:
    """Mostly plain rows (the common batch), now and then one that needs each optional part."""
    def rare(value: Any, default: Any) -> Any:
        return value if rng.random() < 0.15 else default

    return SamplingParams(
        temperature=rng.choice([0.0, 0.0, 0.7, 1.0, 1.3]), top_p=rare(rng.choice([0.5, 0.9]), 1.0),
        top_k=rare(rng.choice([1, 5, VOCAB, VOCAB + 3, 0]), -1), min_p=rare(0.1, 0.0),
        seed=rare(rng.randint(0, 10**6), None), frequency_penalty=rare(0.5, 0.0), presence_penalty=rare(0.3, 0.0),
        repetition_penalty=rare(1.2, 1.0), logit_bias=rare({3: 2.0, "5": -1.0}, None),
        min_new_tokens=rare(rng.randint(1, 6), 0), stop_token_ids=rare([7, 9], None), ignore_eos=rng.random() < 0.5,
    )


def test_sampling_batch_info_build_equals_the_per_field_reference_over_random_batches() -> None:
    rng = random.Random(11)
    for case in range(300):
        b = rng.randint(1, 12)
        params = [random_params(rng) for _ in range(b)]
        outs = [[rng.randrange(VOCAB) for _ in range(rng.randint(0, 8))] for _ in range(b)]
        prompts = [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 5))] for _ in range(b)]
        eos = [{rng.randrange(VOCAB)} for _ in range(b)]
        seeds = [rng.randint(0, 99) for _ in range(b)] if case % 3 == 0 else None
        got = SamplingBatchInfo.build(params, VOCAB, "cpu", outs, prompts, eos_ids=eos, step_seeds=seeds)
        want = reference_build(params, outs, prompts, eos, seeds)
        assert same(got, want), (case, params)


def make_req(stream: bool, max_new: int = 8) -> Req:
    sp = SamplingParams(max_new_tokens=max_new, temperature=0.0, ignore_eos=True)
    return Req(GenerateReq("r", [1, 2, 3], sp, stream=stream), set(), 0)


def told(out: ReqOutput | TokenDelta) -> tuple[list[int], FinishReason | None]:
    """The new tokens and the finish an output tells, in either of its forms."""
    if isinstance(out, tuple):
        return out[1], None
    return out.new_token_ids, out.finished


def reference_take_output(r: Req) -> tuple[list[int], FinishReason | None] | None:
    """take_output's decision as it was (slice first): None or the new tokens it would send."""
    new = r.output_ids[r.sent_tokens:]
    if not new and not r.finished and r.input_logprobs is None:
        return None
    if not (r.stream or r.finished or r.sent_tokens == 0):
        return None
    return new, r.finished_reason


@pytest.mark.parametrize("stream", [False, True])
def test_take_output_sends_what_the_slice_first_order_sent(stream: bool) -> None:
    rng = random.Random(3 + stream)
    for _ in range(50):
        r = make_req(stream)
        for step in range(rng.randint(1, 10)):
            r.output_ids.extend(rng.randrange(100) for _ in range(rng.choice([0, 1, 1, 2])))
            if rng.random() < 0.1 or step == 9:
                r.finished_reason = FinishReason("length")
            want = reference_take_output(r)
            got = r.take_output()
            assert (got is None) == (want is None)
            if got is not None and want is not None:
                assert told(got) == want
            if r.finished:
                break


@pytest.mark.parametrize("lens", [[3, 1, 4], [300, 1, 400]])
def test_an_extend_batch_travels_in_one_transfer_with_every_row_in_place(
    lens: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extend batch's per-request rows, per-token rows and slots go to the device together (its slots as a list,
    or past ``LIST_SLOTS`` as a tensor joined to the rest): one transfer, and each field what it was."""
    from types import SimpleNamespace

    from sgl.core.platform import Capabilities
    from sgl.core.runner import input_prep
    from sgl.core.runner.forward_batch import ForwardMode
    from sgl.core.scheduler.batch import ScheduleBatch

    sent: list[int] = []
    to_device = input_prep.to_device
    monkeypatch.setattr("sgl.core.transfer.to_device", lambda t, d, p: (sent.append(t.numel()), to_device(t, d, p))[1])
    monkeypatch.setattr(input_prep, "to_device", lambda t, d, p: (sent.append(t.numel()), to_device(t, d, p))[1])
    reqs = [Req(GenerateReq(f"r{i}", list(range(10 * i, 10 * i + 900)), SamplingParams()), set(), 0) for i in range(3)]
    for i, r in enumerate(reqs):
        r.req_pool_idx = i + 2
    prefix = [5, 0, 7]
    slots = torch.arange(sum(lens), dtype=torch.int64) + 1000
    batch = ScheduleBatch(ForwardMode.EXTEND, reqs, prefix, lens, slots)
    runner = SimpleNamespace(device=torch.device("cpu"), platform=SimpleNamespace(capabilities=Capabilities()),
                             req_to_token_pool=None, kv_pool=None, attn_backend=None)
    fb = input_prep.build_forward_batch(batch, runner)  # type: ignore[arg-type]
    assert len(sent) == 1
    assert fb.input_ids.tolist() == batch.input_ids() and fb.positions.tolist() == batch.positions()
    assert fb.out_cache_loc.tolist() == slots.tolist()
    assert fb.req_pool_indices.tolist() == [2, 3, 4] and fb.seq_lens.tolist() == [p + e for p, e in zip(prefix, lens)]
    assert fb.extend_prefix_lens is not None and fb.extend_prefix_lens.tolist() == prefix
    assert fb.extend_seq_lens is not None and fb.extend_seq_lens.tolist() == lens
    assert fb.extend_start_loc is not None and fb.extend_start_loc.tolist() == [0, lens[0], lens[0] + lens[1]]
