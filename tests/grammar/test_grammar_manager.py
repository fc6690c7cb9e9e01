"""The grammar contract without an engine: bitmask unpacking, the compile cache, timeouts, sync, edge checks."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from sgl.core.grammar.base import (
    Grammar,
    GrammarBackend,
    GrammarCompileError,
    GrammarKey,
    GrammarKind,
    GrammarVocab,
)
from sgl.core.grammar.manager import (
    GrammarManager,
    RequestGrammar,
    build_vocab_mask,
    check_grammar_request,
    unpack_bitmask,
)
from sgl.core.plugins import get_plugins
from sgl.core.registry import Registry
from sgl.core.sampling.params import SamplingParams

VOCAB = GrammarVocab("", 70, (0,))


class SequenceGrammar(Grammar):
    """Accepts exactly the tokens of ``target`` in order, then the stop token 0."""

    def __init__(self, target: list[int], pos: int = 0, done: bool = False) -> None:
        self.target, self.pos, self.done = target, pos, done

    def accept_token(self, token_id: int) -> bool:
        if self.pos < len(self.target) and token_id == self.target[self.pos]:
            self.pos += 1
            return True
        if self.pos == len(self.target) and token_id == 0 and not self.done:
            self.done = True
            return True
        return False

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        bitmask[row] = 0
        token = self.target[self.pos] if self.pos < len(self.target) else 0
        word, bit = divmod(token, 32)
        bitmask[row, word] = torch.tensor(1 << bit, dtype=torch.int64).to(torch.int32)

    def is_terminated(self) -> bool:
        return self.done

    def rollback(self, num_tokens: int) -> None:
        if self.done and num_tokens:
            self.done, num_tokens = False, num_tokens - 1
        self.pos -= num_tokens

    def fork(self) -> Grammar:
        return SequenceGrammar(self.target, self.pos, self.done)


class FakeBackend(GrammarBackend):
    compiles = 0
    gate: threading.Event | None = None

    def compile(self, key: GrammarKey) -> Grammar:
        type(self).compiles += 1
        if self.gate is not None:
            self.gate.wait(5)
        if key.spec == "bad":
            raise GrammarCompileError("invalid regex: bad spec")
        return SequenceGrammar([int(t) for t in key.spec.split()])


def _manager(timeout: float = 5.0) -> GrammarManager:
    reg: Registry[type] = Registry("grammar backend")
    reg.register("fake", FakeBackend)
    FakeBackend.compiles, FakeBackend.gate = 0, None
    return GrammarManager("fake", VOCAB, timeout, workers=2, registry=reg)


def _settle(m: GrammarManager) -> list:
    failed: list = []
    deadline = time.monotonic() + 5
    while m.has_pending and time.monotonic() < deadline:
        m.wait(0.05)
        failed += m.poll()
    return failed


def test_unpack_bitmask_matches_a_bit_by_bit_reading() -> None:
    gen = torch.Generator().manual_seed(0)
    packed = torch.randint(-(2**31), 2**31 - 1, (3, 3), dtype=torch.int64, generator=gen).to(torch.int32)
    forbidden = unpack_bitmask(packed, 70)
    assert forbidden.shape == (3, 70)
    for r in range(3):
        for t in range(70):
            allowed = (int(packed[r, t // 32]) >> (t % 32)) & 1
            assert bool(forbidden[r, t]) == (not allowed)


def test_equal_constraints_compile_once_and_each_request_gets_its_own_matcher() -> None:
    m = _manager()
    a, b = m.start("a", GrammarKey(GrammarKind.REGEX, "5 6")), m.start("b", GrammarKey(GrammarKind.REGEX, "5 6"))
    assert _settle(m) == [] and FakeBackend.compiles == 1 and m.stats["cache_hits"] == 1
    assert a.accept(5) and a.accepted == 1 and b.accepted == 0
    mask = build_vocab_mask([a, None, b], 70, "cpu")
    assert mask[0].logical_not().nonzero().flatten().tolist() == [6]
    assert not mask[1].any()  # an unconstrained row forbids nothing
    assert mask[2].logical_not().nonzero().flatten().tolist() == [5]


def test_a_spec_error_fails_its_request_with_400_and_is_cached() -> None:
    m = _manager()
    m.start("r1", GrammarKey(GrammarKind.REGEX, "bad"))
    (owner, reason), = _settle(m)
    assert owner == "r1" and reason.type == "abort" and reason.status_code == 400
    assert reason.message == "invalid regex: bad spec"
    m.start("r2", GrammarKey(GrammarKind.REGEX, "bad"))
    assert [o for o, _ in _settle(m)] == ["r2"] and FakeBackend.compiles == 1


def test_a_slow_compile_times_out_without_blocking_other_requests() -> None:
    m = _manager(timeout=0.2)
    FakeBackend.gate = threading.Event()
    slow = m.start("slow", GrammarKey(GrammarKind.EBNF, "1"))
    t0 = time.monotonic()
    failed = _settle(m)
    assert time.monotonic() - t0 < 2
    assert [o for o, _ in failed] == ["slow"] and "timed out after 0.2s" in failed[0][1].message
    assert not slow.ready
    FakeBackend.gate.set()
    m.close()


def test_disabled_backend_fails_constrained_requests_at_once() -> None:
    m = GrammarManager("none", VOCAB, 5.0)
    m.start("r", GrammarKey(GrammarKind.JSON, "{}"))
    (_, reason), = m.poll()
    assert "disabled (--grammar-backend none)" in reason.message and reason.status_code == 400


def test_advance_finishes_on_the_stop_token_and_sync_rolls_back_to_the_kept_output() -> None:
    m = _manager()
    rg = m.start("r", GrammarKey(GrammarKind.REGEX, "3 4"))
    _settle(m)
    assert rg.advance(3, {0}) is None and rg.advance(4, {0}) is None
    stop = rg.advance(0, {0})
    assert stop is not None and stop.type == "stop" and stop.matched == 0
    rg.sync([3])  # e.g. output trimmed to one token: the matcher must expect 4 next
    assert rg.accepted == 1 and not rg.is_terminated()
    assert build_vocab_mask([rg], 70, "cpu")[0].logical_not().nonzero().flatten().tolist() == [4]
    rg.sync([3, 4])  # and replays what it lacks
    assert rg.accepted == 2
    bad = rg.advance(9, {0})
    assert bad is not None and bad.type == "abort"


def test_sync_refuses_output_the_grammar_cannot_have_produced() -> None:
    rg = RequestGrammar(GrammarKey(GrammarKind.REGEX, "1"), None, 0.0, 1.0)
    rg.grammar = SequenceGrammar([1])
    with pytest.raises(RuntimeError, match="rejected token 2"):
        rg.sync([2])


def test_edge_check_names_the_cause() -> None:
    params = SamplingParams(regex="a+")
    with pytest.raises(ValueError, match="disabled"):
        check_grammar_request(params, "none")
    broken: Registry[type] = Registry("grammar backend")
    broken.register("xgrammar", "sgl_no_such_module_for_tests:Backend")
    with pytest.raises(ValueError, match=r"install it with pip install 'sgl\[grammar\]'"):
        check_grammar_request(params, "xgrammar", broken)
    with pytest.raises(ValueError, match="unknown grammar backend 'llg'"):
        check_grammar_request(params, "llg")
    check_grammar_request(SamplingParams(), "none")  # unconstrained requests never look at the backend


def test_the_grammar_plugin_registers_xgrammar_through_the_entry_point() -> None:
    plugins = get_plugins()
    assert "xgrammar" in plugins.grammar_backends
    assert plugins.grammar_backends.origin("xgrammar") == "grammar"
    assert any(i.name == "grammar" and i.module == "sgl.plugins.grammar.plugin" for i in plugins.infos)


def test_sampling_params_allow_at_most_one_constraint() -> None:
    SamplingParams(choices=("a", "b")).validate()
    for extra in ({"regex": "a"}, {"ebnf": 'root ::= "a"'}, {"choices": ["a"]}):
        with pytest.raises(ValueError, match="at most one of json_schema, regex, ebnf, choices"):
            SamplingParams(json_schema="{}", **extra).validate()
    with pytest.raises(ValueError, match="choices must be non-empty strings"):
        SamplingParams(choices=["a", ""]).validate()
