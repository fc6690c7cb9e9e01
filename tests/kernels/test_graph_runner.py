"""The portable graph runner captures and replays through the platform's graph hooks alone, so any platform that
answers them (CUDA today, ROCm or XPU tomorrow) shares it; padded rows never carry a previous batch's values.

A recording platform stands in for a device: its "graph" keeps the work the model issued during capture and redoes
it, over the same tensors, on replay, which is what a device graph does with the same addresses.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sgl.core.attention.base import AttentionBackend
from sgl.core.attention.torch_native import TorchNativeAttnBackend
from sgl.core.platform import Capabilities, Platform
from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode
from sgl.kernels import attention_backend, graph_runner, linear_method, verify_graphs
from sgl.kernels.graph_runner import GraphRunner, capture_sizes, graph_runner_for

MAX_BS, PAD_SLOT = 4, 7


class RecordedGraph:
    def __init__(self) -> None:
        self.work: list[Callable[[], Any]] = []

    def replay(self) -> None:
        for fn in self.work:
            fn()


class RecordingPlatform(Platform):
    name = "recording"
    capabilities = Capabilities(graph_capture=True)

    def __init__(self) -> None:
        self.log: list[Any] = []
        self.capturing: RecordedGraph | None = None

    def new_graph(self) -> Any:
        return RecordedGraph()

    def graph_pool(self) -> Any:
        self.log.append("new pool")
        return "pool"

    def new_stream(self) -> Any:
        self.log.append("new stream")
        return "side"

    @contextlib.contextmanager
    def stream_context(self, stream: Any) -> Iterator[None]:
        self.log.append(("on stream", stream))
        yield

    @contextlib.contextmanager
    def graph_capture(self, graph: Any, pool: Any, stream: Any) -> Iterator[None]:
        self.log.append(("capture", pool, stream))
        self.collector_on_during_capture = gc.isenabled()
        self.capturing = graph
        yield
        self.capturing = None

    def synchronize(self) -> None:
        self.log.append("synchronize")


class EchoModel:
    """Returns, per row, what it was given: (input id, position, request slot, seq len, KV slot)."""

    def __init__(self, platform: RecordingPlatform) -> None:
        self.platform = platform
        self.calls = 0

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        def rows() -> torch.Tensor:
            return torch.stack([input_ids, positions, fb.req_pool_indices, fb.seq_lens, fb.out_cache_loc], dim=1)

        self.calls += 1
        out = rows()
        if self.platform.capturing is not None:
            self.platform.capturing.work.append(lambda: out.copy_(rows()))
        return out


class GraphHooksBackend(AttentionBackend):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True):  # type: ignore[no-untyped-def]
        raise AssertionError("the echo model runs no attention")

    forward_decode = forward_extend

    def init_graph_state(self, max_bs: int, max_context_len: int) -> None:
        self.calls.append(("state", max_bs))

    def init_metadata_capture(self, bs: int, forward_batch: ForwardBatch) -> None:
        self.calls.append(("capture", bs))

    def init_metadata_replay(self, bs: int, forward_batch: ForwardBatch) -> None:
        self.calls.append(("replay", bs))


def _runner(platform: RecordingPlatform, backend: AttentionBackend | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        model=EchoModel(platform), attn_backend=backend or GraphHooksBackend(),
        args=SimpleNamespace(cuda_graph_max_bs=MAX_BS), max_running_requests=PAD_SLOT, device=torch.device("cpu"),
        padding_req_slot=PAD_SLOT, req_to_token_pool=SimpleNamespace(req_to_token=torch.ones(PAD_SLOT + 1, 16)),
        context_len=16, kv_pool=None,
    )


def _decode(bs: int, base: int) -> ForwardBatch:
    def col(offset: int) -> torch.Tensor:
        return torch.arange(bs, dtype=torch.int64) + base + offset

    return ForwardBatch(
        forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=col(100), positions=col(200),
        req_pool_indices=col(0) % PAD_SLOT, seq_lens=col(300), out_cache_loc=col(400), seq_lens_cpu=[1] * bs,
        req_to_token_pool=None, kv_pool=None, attn_backend=None,  # type: ignore[arg-type]
    )


def test_capture_goes_through_the_platform_hooks_with_one_stream_and_one_pool() -> None:
    platform = RecordingPlatform()
    runner = _runner(platform)
    gr = graph_runner_for(runner, platform)
    assert isinstance(gr, GraphRunner)
    sizes = capture_sizes(MAX_BS)
    assert gr.sizes == sizes == [1, 2, 4] and sorted(gr.graphs) == sizes
    per_size = [("on stream", "side"), ("capture", "pool", "side")]
    assert platform.log == ["new pool", "new stream", *per_size * len(sizes), "synchronize"]
    assert runner.model.calls == 3 * len(sizes)  # two warm-up runs and the captured one
    assert runner.attn_backend.calls == [("state", MAX_BS)] + [("capture", bs) for bs in reversed(sizes)]
    assert torch.equal(runner.req_to_token_pool.req_to_token[PAD_SLOT], torch.zeros(16))


def test_no_garbage_collection_runs_during_a_capture() -> None:
    """A collection mid-capture may free an earlier engine's graphs or tensors: a device call a capture forbids."""
    platform = RecordingPlatform()
    assert gc.isenabled()
    assert isinstance(graph_runner_for(_runner(platform), platform), GraphRunner)
    assert platform.collector_on_during_capture is False
    assert gc.isenabled()


def test_replay_pads_to_the_next_size_and_resets_rows_a_larger_batch_left() -> None:
    platform = RecordingPlatform()
    runner = _runner(platform)
    gr = GraphRunner(runner, platform)
    eager = EchoModel(platform)
    for bs, padded, base in [(4, 4, 0), (3, 4, 10), (2, 2, 20), (1, 1, 30)]:
        fb = _decode(bs, base)
        assert gr.can_run(fb)
        with torch.inference_mode():  # as ModelRunner.forward replays
            out = gr.replay(fb)
        assert torch.equal(out, eager(fb.input_ids, fb.positions, fb))
        assert runner.attn_backend.calls[-1] == ("replay", padded)
        # NOTE: a padded row reads the spare request slot with seq_len 1 and writes its KV to the padding sink.
        for row in gr.outputs[padded][bs:]:
            assert row.tolist() == [0, 0, PAD_SLOT, 1, 0]
    assert not gr.can_run(_decode(MAX_BS + 1, 0))


def test_a_replay_reuses_its_sizes_static_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay's static batch (views of the static buffers) is built once per captured size, not at every replay:
    at batch 1 the host builds it between two launches of every decode step (an EAGLE head's chained steps too)."""
    platform = RecordingPlatform()
    gr = GraphRunner(_runner(platform), platform)
    built: list[int] = []
    build = gr._static_batch
    monkeypatch.setattr(gr, "_static_batch", lambda bs: (built.append(bs), build(bs))[1])
    eager = EchoModel(platform)
    with torch.inference_mode():
        for base in range(0, 50, 10):
            fb = _decode(1, base)
            assert torch.equal(gr.replay(fb), eager(fb.input_ids, fb.positions, fb))
        gr.replay(_decode(3, 60))
    assert built == [1, 4]


def test_graphs_stay_off_where_the_platform_or_the_backend_cannot_capture() -> None:
    base = Platform()
    assert (base.new_graph(), base.graph_pool(), base.new_stream()) == (None, None, None)
    with pytest.raises(NotImplementedError, match="cannot capture graphs"):
        base.graph_capture(None, None, None)
    assert graph_runner_for(_runner(RecordingPlatform()), base) is None
    native = TorchNativeAttnBackend(None)
    assert graph_runner_for(_runner(RecordingPlatform(), native), RecordingPlatform()) is None


def test_the_portable_pieces_name_no_vendor_api_and_no_plugin() -> None:
    for module in (attention_backend, graph_runner, linear_method, verify_graphs):
        source = inspect.getsource(module)
        assert "torch.cuda" not in source and "sgl.plugins" not in source, module.__name__
