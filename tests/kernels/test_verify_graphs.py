"""Speculative verify forwards (and an EAGLE head's chained draft steps) replayed from graphs, as far as a CPU can
show it: the target runs its verify forwards on Triton attention under the interpreter, through ``VerifyGraphs``
(static buffers, padded batch sizes, requests with fewer drafts than the graph's N, the hidden layers EAGLE-3 reads,
tree masks packed per replay) with an emulated graph whose replay redoes, over the very same buffers and attention
metadata, what the model issued during capture. Greedy tokens and drafts must be those of the eager verify (the
oracle), for STANDALONE and EAGLE-3 chains and EAGLE trees; the EAGLE-3 head's decode steps also replay from the
portable decode graphs, fed its features through the graph's static row inputs.

NOTE: a stand-in for a device graph: it checks what the replayed forward reads and returns, not that it captures
(tests/gpu/test_speculative_gpu.py runs real graphs on and off).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sgl.core.attention.torch_native import TorchNativeAttnBackend
from sgl.core.demo_model import write_demo_model
from sgl.core.platform import Capabilities, Platform
from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode
from sgl.core.speculative.drafts import DeviceDrafts
from sgl.kernels.attention_backend import TritonAttnBackend
from sgl.kernels.graph_runner import GraphRunner, capture_sizes
from sgl.kernels.verify_graphs import VerifyGraphs
from sgl.plugins.speculative.eagle_models import TARGET_HIDDEN
from tests.core.engine_utils import PROMPTS, make_engine

MAX_BS = 4
# NOTE: different lengths, so budgets shrink near the end (requests with fewer drafts than N share a graph) and
# the batch runs at a size that is not captured (3 -> padded to 4)
PARAMS = [{"temperature": 0.0, "max_new_tokens": n, "ignore_eos": True} for n in (9, 5, 7)]
# NOTE: small, since every verify forward's attention runs under the Triton interpreter (a program per head and
# request): two layers, two heads
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
         "head_dim": 32}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("target") / "target", seed=4, num_layers=2, **SMALL)


class RerunGraph:
    def __init__(self) -> None:
        self.work: list[Callable[[], None]] = []

    def replay(self) -> None:
        for fn in self.work:
            fn()


class RerunPlatform(Platform):
    """Graph hooks without a device: a capture records the model call (see RerunModel), a replay redoes it."""

    name = "rerun"
    capabilities = Capabilities(graph_capture=True)

    def __init__(self) -> None:
        self.capturing: RerunGraph | None = None

    def new_graph(self) -> Any:
        return RerunGraph()

    def new_stream(self) -> Any:
        return None

    def stream_context(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def graph_capture(self, graph: Any, pool: Any, stream: Any) -> Iterator[None]:
        self.capturing = graph
        try:
            yield
        finally:
            self.capturing = None


class RerunModel:
    """The runner's model; a call made during a capture is recorded so a replay redoes it into the same outputs."""

    def __init__(self, model: Any, platform: RerunPlatform) -> None:
        self.model, self.platform = model, platform

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        out = self.model(input_ids, positions, fb)
        graph = self.platform.capturing
        if graph is not None:
            held = dict(fb.captured_hidden)

            def again() -> None:
                out.copy_(self.model(input_ids, positions, fb))
                for layer, t in held.items():
                    t.copy_(fb.captured_hidden[layer])
                fb.captured_hidden.update(held)

            graph.work.append(again)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


class TritonVerify(TritonAttnBackend):
    """Triton (and its verify graph hooks) for verify batches; the torch reference for the rest, which the
    interpreter would only slow down."""

    def __init__(self, runner: Any) -> None:
        super().__init__(runner)
        self.reference = TorchNativeAttnBackend(runner)

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        if forward_batch.forward_mode.is_verify:
            super().init_forward_metadata(forward_batch)

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True):  # type: ignore[no-untyped-def]
        if forward_batch.forward_mode.is_verify:
            return super().forward_extend(q, k, v, layer, forward_batch, save_kv_cache)
        return self.reference.forward_extend(q, k, v, layer, forward_batch, save_kv_cache)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True):  # type: ignore[no-untyped-def]
        # NOTE: lengths from the device tensor: a replayed decode graph's static batch carries no host copy
        fb = dataclasses.replace(forward_batch, seq_lens_cpu=forward_batch.seq_lens.tolist())
        return self.reference.forward_decode(q, k, v, layer, fb, save_kv_cache)


class TorchGraphHooks(TorchNativeAttnBackend):
    """The reference with (no-op) graph hooks, reading each decode row's length from the device tensor: a replayed
    static batch carries no host copy of it."""

    def init_graph_state(self, max_bs: int, max_context_len: int) -> None:
        return

    def init_metadata_capture(self, bs: int, forward_batch: ForwardBatch) -> None:
        return

    def init_metadata_replay(self, bs: int, forward_batch: ForwardBatch) -> None:
        return

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True):  # type: ignore[no-untyped-def]
        fb = dataclasses.replace(forward_batch, seq_lens_cpu=forward_batch.seq_lens.tolist())
        return super().forward_decode(q, k, v, layer, fb, save_kv_cache)


class TritonExtendTorchDecode(TritonAttnBackend):
    """An EAGLE head's backend here: Triton for its extends (its catch-up graphs run over padded rows, which the
    Triton kernel reads by their start offsets), the reference with no-op graph hooks for its decode steps."""

    def __init__(self, runner: Any) -> None:
        super().__init__(runner)
        self.decode = TorchGraphHooks(runner)

    def init_graph_state(self, max_bs: int, max_context_len: int) -> None:
        return

    def init_metadata_capture(self, bs: int, forward_batch: ForwardBatch) -> None:
        return

    def init_metadata_replay(self, bs: int, forward_batch: ForwardBatch) -> None:
        return

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        if forward_batch.forward_mode.is_extend:
            super().init_forward_metadata(forward_batch)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True):  # type: ignore[no-untyped-def]
        return self.decode.forward_decode(q, k, v, layer, forward_batch, save_kv_cache)


class Replays:
    """Counts the replays and what they padded."""

    def __init__(self, graphs: VerifyGraphs) -> None:
        self.graphs, self.calls, self.padded_batches, self.short_requests = graphs, 0, 0, 0
        self._replay = graphs.replay
        graphs.replay = self.replay  # type: ignore[method-assign]

    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        self.calls += 1
        self.padded_batches += fb.batch_size not in self.graphs.sizes
        self.short_requests += sum(e < self.graphs.tokens for e in fb.extend_seq_lens_cpu or [])
        return self._replay(fb)


class Drafts(contextlib.AbstractContextManager["Drafts"]):
    """Records what the algorithm drafted, step by step: EAGLE's chains or trees, or a drafting algorithm's."""

    def __init__(self, spec: Any) -> None:
        from sgl.plugins.speculative import eagle

        self.seen: list[list[list[int]]] = []
        if getattr(spec, "topk", 1) > 1:
            self.owner, self.name = eagle, "draft_trees"
        else:
            self.owner, self.name = spec, "_draft" if hasattr(spec, "_draft") else "propose"
        self.inner = inner = getattr(self.owner, self.name)

        def record(*args: Any) -> Any:
            out = inner(*args)
            if isinstance(out, DeviceDrafts):  # EAGLE's chains stay on the device: read here, for the test only
                self.seen.append(out.split(out.tokens.tolist()))
            elif out is not None:
                self.seen.append([list(d) if isinstance(d, list) else d.tokens + d.parents for d in out])
            return out

        setattr(self.owner, self.name, record)

    def __exit__(self, *exc: object) -> None:
        setattr(self.owner, self.name, self.inner)

    def take(self) -> list[list[list[int]]]:
        seen, self.seen = self.seen, []
        assert any(any(d) for d in seen)
        return seen


def _generate(engine: Any) -> list[list[int]]:
    return [o["output_ids"] for o in engine.generate(PROMPTS[: len(PARAMS)], PARAMS)]


def _eager_then_graphed(model: Path, tokens_per_request: int, layers: tuple[int, ...], draft_graphs: bool = False,
                        tree: bool = False, **kw: Any) -> None:
    # NOTE: no radix cache, so the second run drafts exactly as the first (EAGLE's draft of a cached prefix differs)
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(make_engine(
            model, disable_speculative_gate=True, max_running_requests=MAX_BS, max_total_tokens=512,
            context_length=128, disable_radix_cache=True, **kw))
        scheduler = engine.runtime.scheduler
        runner = scheduler.runner
        assert runner.verify_graphs is None  # the CPU platform captures no graphs
        runner.attn_backend = TritonVerify(runner)
        spec = next(f for f in scheduler.features if f.name == "speculative")
        draft: Any = getattr(spec, "draft")  # noqa: B009  # STANDALONE: a DraftModel; EAGLE: the head's runner
        drafts = stack.enter_context(Drafts(spec))
        if draft_graphs:
            draft.attn_backend = TritonExtendTorchDecode(draft)
        eager = _generate(engine)
        eager_drafts = drafts.take()
        platform = RerunPlatform()
        runner.model = RerunModel(runner.model, platform)
        graphs = runner.verify_graphs = VerifyGraphs(runner, platform, capture_sizes(MAX_BS), None,
                                                     tokens_per_request, layers, tree)
        replays = Replays(graphs)
        target_decodes: list[int] = []
        if draft_graphs:
            # NOTE: the target's decode graphs record the layers the head reads (capture_hidden_in_graphs)
            runner.graph_hidden_layers = layers
            runner.graph_runner = GraphRunner(runner, platform)
            target_replay = runner.graph_runner.replay

            def replay_target(fb: ForwardBatch) -> torch.Tensor:
                target_decodes.append(fb.batch_size)
                return target_replay(fb)

            runner.graph_runner.replay = replay_target  # type: ignore[method-assign]
            draft.model = RerunModel(draft.model, platform)
            draft.graph_runner = GraphRunner(draft, platform)
            draft_replay = draft.graph_runner.replay
            draft_sizes: list[int] = []

            def replay_draft(fb: ForwardBatch) -> torch.Tensor:
                draft_sizes.append(fb.batch_size)
                return draft_replay(fb)

            draft.graph_runner.replay = replay_draft
            # the head's catch-up (the accepted positions' features, at most N per request) from graphs too
            width = draft.model.target_hidden_size * len(layers)
            draft.verify_graphs = VerifyGraphs(draft, platform, capture_sizes(MAX_BS), None, tokens_per_request, (),
                                               mode=ForwardMode.EXTEND, row_inputs={TARGET_HIDDEN: width})
            catch_ups = Replays(draft.verify_graphs)
        graphed = _generate(engine)
    # the drafts too: verification makes the tokens right whatever was drafted
    assert graphed == eager and drafts.take() == eager_drafts
    assert replays.calls > 0 and replays.padded_batches > 0 and replays.short_requests > 0
    if draft_graphs:
        assert 3 in draft_sizes  # padded to 4
        assert len(draft.graph_runner.row_inputs) == 1
        assert catch_ups.calls > 0 and catch_ups.padded_batches > 0 and catch_ups.short_requests > 0
        assert target_decodes  # plain decode steps, whose features the head reads next


def test_standalone_verify_graphs_give_the_eager_verify_tokens(target: Path, tmp_path: Path) -> None:
    draft = write_demo_model(tmp_path / "draft", seed=1, num_layers=1, **SMALL)
    _eager_then_graphed(target, 4, (), speculative_algorithm="STANDALONE", speculative_draft_model_path=str(draft),
                        speculative_num_steps=3)


def test_eagle3_chain_verify_and_draft_graphs_give_the_eager_tokens(target: Path, tmp_path: Path) -> None:
    """EAGLE-3 drafts from the target's layers (here 1, 1 and 2): the verify graphs capture them too, and hand them
    back per row (EAGLE-1 takes the same path without them), and so do the target's decode graphs; the head's chained
    steps replay decode graphs."""
    from tests.speculative.eagle_drafts import write_eagle3_draft

    draft = write_eagle3_draft(tmp_path / "eagle3", target, aux_layer_ids=(0, 0, 1))
    _eager_then_graphed(target, 4, (1, 1, 2), draft_graphs=True, speculative_algorithm="EAGLE3",
                        speculative_draft_model_path=str(draft),
                        speculative_num_steps=3)


def test_eagle_tree_verify_graphs_give_the_eager_tokens(tmp_path: Path) -> None:
    """EAGLE-2 trees (topk 2, 4 nodes): each replay packs the batch's tree masks into the graph's static mask buffer,
    a smaller tree (fewer nodes than N - 1) with its own row stride. The head mirrors its target, so paths are
    accepted past the root, which only the right masks give."""
    from tests.speculative.eagle_drafts import write_mirroring_pair

    target, draft = write_mirroring_pair(tmp_path)
    _eager_then_graphed(target, 5, (), tree=True, speculative_algorithm="EAGLE",
                        speculative_draft_model_path=str(draft), speculative_num_steps=3, speculative_eagle_topk=2,
                        speculative_num_draft_tokens=5)


class RowEcho:
    """Per row, what the replayed forward read: (input id, position, KV slot, request slot, prefix, extend length)."""

    def __init__(self, platform: Any) -> None:
        self.platform = platform
        self.dtype = torch.float32

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        if not fb.forward_mode.is_verify:  # the decode graphs' capture
            return input_ids.clone()
        prefix, ext = fb.extend_prefix_lens, fb.extend_seq_lens
        assert prefix is not None and ext is not None

        def rows() -> torch.Tensor:
            per_req = torch.stack([fb.req_pool_indices, prefix, ext], dim=1)
            return torch.cat([torch.stack([input_ids, positions, fb.out_cache_loc], dim=1),
                              per_req.repeat_interleave(input_ids.shape[0] // fb.batch_size, dim=0)], dim=1)

        out = rows()
        if self.platform.capturing is not None:
            self.platform.capturing.work.append(lambda: out.copy_(rows()))
        return out


class VerifyHooks(TorchNativeAttnBackend):
    def __init__(self) -> None:
        super().__init__(None)
        self.calls: list[tuple[str, int, int]] = []

    def init_graph_state(self, max_bs: int, max_context_len: int) -> None:
        return

    def init_metadata_capture(self, bs: int, forward_batch: ForwardBatch) -> None:
        return

    def init_verify_metadata_capture(self, bs: int, tokens_per_request: int, forward_batch: ForwardBatch) -> None:
        self.calls.append(("capture", bs, tokens_per_request))

    def init_verify_metadata_replay(self, bs: int, tokens_per_request: int, forward_batch: ForwardBatch) -> None:
        self.calls.append(("replay", bs, tokens_per_request))


def _echo_runner(platform: RerunPlatform, backend: Any) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        model=RowEcho(platform), attn_backend=backend, args=SimpleNamespace(cuda_graph_max_bs=4),
        max_running_requests=7, device=torch.device("cpu"), padding_req_slot=7, context_len=16, kv_pool=None,
        req_to_token_pool=SimpleNamespace(req_to_token=torch.ones(8, 16)), dtype=torch.float32,
    )


def test_verify_graphs_need_the_backends_verify_hooks() -> None:
    platform = RerunPlatform()
    assert GraphRunner(_echo_runner(platform, TorchGraphHooks(None)), platform).capture_verify(3) is None
    backend = VerifyHooks()
    graphs = GraphRunner(_echo_runner(platform, backend), platform).capture_verify(3)
    assert graphs is not None and sorted(graphs.graphs) == [1, 2, 4]
    assert backend.calls == [("capture", 4, 3), ("capture", 2, 3), ("capture", 1, 3)]


def test_a_replay_puts_short_requests_and_padded_rows_on_the_padding_sink() -> None:
    """Three requests of 3, 1 and 2 tokens in the 4 x 3 graph: each request's tokens at its own rows, a short request's
    spare rows and the padded request write their KV to slot 0, the padded request reads the spare request slot."""
    platform = RerunPlatform()
    backend = VerifyHooks()
    graphs = GraphRunner(_echo_runner(platform, backend), platform).capture_verify(3)
    assert graphs is not None
    lens, prefix = [3, 1, 2], [10, 20, 30]
    ids = torch.tensor([101, 102, 103, 201, 301, 302])
    pos = torch.tensor([10, 11, 12, 20, 30, 31])
    slots = torch.tensor([51, 52, 53, 61, 71, 72])
    fb = ForwardBatch(
        forward_mode=ForwardMode.TARGET_VERIFY, batch_size=3, input_ids=ids, positions=pos,
        req_pool_indices=torch.tensor([0, 1, 2]), seq_lens=torch.tensor(prefix) + torch.tensor(lens),
        out_cache_loc=slots, seq_lens_cpu=[13, 21, 32], req_to_token_pool=None, kv_pool=None,  # type: ignore[arg-type]
        attn_backend=backend, extend_prefix_lens=torch.tensor(prefix), extend_seq_lens=torch.tensor(lens),
        extend_start_loc=torch.tensor([0, 3, 4]), extend_prefix_lens_cpu=prefix, extend_seq_lens_cpu=lens,
    )
    full = dataclasses.replace(
        fb, batch_size=4, input_ids=torch.arange(12) + 900, positions=torch.arange(12) + 900,
        out_cache_loc=torch.arange(12) + 900, req_pool_indices=torch.tensor([3, 4, 5, 6]),
        seq_lens=torch.full((4,), 9), extend_prefix_lens=torch.full((4,), 6), extend_seq_lens=torch.full((4,), 3),
        extend_prefix_lens_cpu=[6] * 4, extend_seq_lens_cpu=[3] * 4,
    )
    assert graphs.can_run(fb) and graphs.can_run(full)
    with torch.inference_mode():  # as ModelRunner.forward replays
        graphs.replay(full)  # NOTE: every row holds a value now, which the next, smaller replay must not reuse
        out = graphs.replay(fb)
    assert backend.calls[-1] == ("replay", 4, 3)
    assert out.tolist() == [
        [101, 10, 51, 0, 10, 3], [102, 11, 52, 0, 10, 3], [103, 12, 53, 0, 10, 3],
        [201, 20, 61, 1, 20, 1], [301, 30, 71, 2, 30, 2], [302, 31, 72, 2, 30, 2],
    ]
    whole = graphs.outputs[4]
    assert whole[4:6, :3].tolist() == [[0, 0, 0], [0, 0, 0]]  # request 1's spare rows
    assert whole[8, :3].tolist() == [0, 0, 0]  # request 2's spare row
    assert whole[9:].tolist() == [[0, 0, 0, 7, 0, 3]] * 3  # the padded request: the spare slot, the sink
    tree = dataclasses.replace(fb, tree_masks=[torch.ones(e, e, dtype=torch.bool) for e in lens])
    assert not graphs.can_run(tree)  # chain graphs; a tree batch runs eagerly
    assert not graphs.can_run(dataclasses.replace(fb, extend_seq_lens_cpu=[4, 1, 1]))  # more than N tokens


def test_verify_graphs_stay_within_a_prefill_chunk_of_tokens() -> None:
    """bs x N rows of activations: no more than a prefill chunk's, which the memory plan leaves room for."""
    platform = RerunPlatform()
    runner = _echo_runner(platform, VerifyHooks())
    runner.args.chunked_prefill_size = 6
    graphs = GraphRunner(runner, platform).capture_verify(3)
    assert graphs is not None and graphs.sizes == [1, 2] and graphs.max_bs == 2


def test_a_single_short_request_replays_from_the_first_rows_without_an_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 1 (the latency case) with fewer tokens than N: its tokens are the graph's first rows, so the replay
    copies them there and sends no row index to the device; the rows after them are the padding sink's."""
    import sgl.kernels.verify_graphs as vg

    platform = RerunPlatform()
    backend = VerifyHooks()
    graphs = GraphRunner(_echo_runner(platform, backend), platform).capture_verify(3)
    assert graphs is not None

    def batch(ids: list[int], prefix: int, slots: list[int]) -> ForwardBatch:
        e = len(ids)
        return ForwardBatch(
            forward_mode=ForwardMode.TARGET_VERIFY, batch_size=1, input_ids=torch.tensor(ids),
            positions=torch.arange(prefix, prefix + e), req_pool_indices=torch.tensor([2]),
            seq_lens=torch.tensor([prefix + e]), out_cache_loc=torch.tensor(slots), seq_lens_cpu=[prefix + e],
            req_to_token_pool=None, kv_pool=None, attn_backend=backend,  # type: ignore[arg-type]
            extend_prefix_lens=torch.tensor([prefix]), extend_seq_lens=torch.tensor([e]),
            extend_start_loc=torch.tensor([0]), extend_prefix_lens_cpu=[prefix], extend_seq_lens_cpu=[e],
        )

    def no_transfer(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a batch-1 replay sent a row index to the device")

    monkeypatch.setattr(vg, "to_device", no_transfer)
    with torch.inference_mode():
        graphs.replay(batch([7, 8, 9], 40, [81, 82, 83]))  # every row holds a value now
        out = graphs.replay(batch([5], 20, [61]))
    assert out.tolist() == [[5, 20, 61, 2, 20, 1]]
    assert graphs.outputs[1][1:, :3].tolist() == [[0, 0, 0], [0, 0, 0]]  # the spare rows: the sink
