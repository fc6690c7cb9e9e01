"""Decode graphs: one captured graph per batch size, a batch padded up to the next captured size.

Decode steps of a small model are launch-bound: a graph replays every kernel of the forward with one launch. The
graph, its memory pool and the capture stream come from the platform's graph hooks (``new_graph``, ``graph_pool``,
``new_stream``, ``stream_context``, ``graph_capture``), so every platform that captures graphs shares this runner.
"""

from __future__ import annotations

import bisect
import functools
import logging
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from sgl.core.attention.base import AttentionBackend
from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode
from sgl.kernels.capture_gc import collector_paused

if TYPE_CHECKING:
    from sgl.core.platform import Platform
    from sgl.kernels.verify_graphs import VerifyGraphs

logger = logging.getLogger(__name__)


def capture_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, then every 8 (and every 16 past 256) up to max_bs."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_bs]
    s = 16
    while s <= max_bs:
        sizes.append(s)
        s += 8 if s < 256 else 16
    if sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


@functools.cache
def _log_once(message: str) -> None:
    logger.warning(message)


def graph_runner_for(runner: Any, platform: Platform) -> GraphRunner | None:
    """Decode graphs, where the platform captures graphs and the runner's attention backend has the graph hooks."""
    if not platform.capabilities.graph_capture:
        _log_once(f"decode graphs are off: platform {platform.name} cannot capture graphs")
        return None
    backend = getattr(runner, "attn_backend", None)
    if backend is None or type(backend).init_graph_state is AttentionBackend.init_graph_state:
        _log_once(f"decode graphs are off: attention backend {type(backend).__name__} cannot be captured")
        return None
    return GraphRunner(runner, platform)


class GraphRunner:
    """Captures ``model.forward`` for DECODE batches over static input buffers and replays it.

    NOTE: padded rows point at the runner's spare request slot with seq_len 1 and write their KV to slot 0, the
    padding sink, so they never touch a real request's cache.
    """

    def __init__(self, runner: Any, platform: Platform) -> None:
        self.runner = runner
        self.platform = platform
        self.model = runner.model
        self.attn = runner.attn_backend
        args = runner.args
        self.max_bs = min(args.cuda_graph_max_bs, runner.max_running_requests)
        self.sizes = capture_sizes(self.max_bs)
        device = runner.device
        n = self.max_bs
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.req_pool_indices = torch.full((n,), runner.padding_req_slot, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int64, device=device)
        self.out_cache_loc = torch.zeros(n, dtype=torch.int64, device=device)
        runner.req_to_token_pool.req_to_token[runner.padding_req_slot].zero_()
        # NOTE: per-row inputs a model reads from ``forward_batch.extras`` (an EAGLE head's features), declared by
        # the model as {name: width}: static too, copied in at each replay (padded rows read zeros)
        self.row_inputs: dict[str, torch.Tensor] = {
            name: torch.zeros(n, width, dtype=runner.dtype, device=device)
            for name, width in dict(getattr(self.model, "graph_row_inputs", {})).items()
        }
        # NOTE: hidden layers every graph records too (the runner's ``graph_hidden_layers``: EAGLE-3's target)
        self.hidden_layers: tuple[int, ...] = tuple(getattr(runner, "graph_hidden_layers", ()))
        self.graphs: dict[int, Any] = {}  # the platform's graph objects (``replay()``)
        self.outputs: dict[int, torch.Tensor] = {}
        self.captured: dict[int, dict[int, torch.Tensor]] = {}
        self._replay_batches: dict[int, ForwardBatch] = {}
        # NOTE: one pool for every captured size, so the graphs share their activations' memory.
        self.pool: Any = platform.graph_pool()
        self.attn.init_graph_state(self.max_bs, runner.context_len)
        self._capture_all()

    def _static_batch(self, bs: int) -> ForwardBatch:
        r = self.runner
        return ForwardBatch(
            forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=self.input_ids[:bs],
            positions=self.positions[:bs], req_pool_indices=self.req_pool_indices[:bs], seq_lens=self.seq_lens[:bs],
            out_cache_loc=self.out_cache_loc[:bs], seq_lens_cpu=[1] * bs, req_to_token_pool=r.req_to_token_pool,
            kv_pool=r.kv_pool, attn_backend=self.attn, extras={k: v[:bs] for k, v in self.row_inputs.items()},
            capture_hidden_layers=self.hidden_layers,
        )

    @torch.inference_mode()
    def _capture_all(self) -> None:
        platform = self.platform
        stream = platform.new_stream()
        with collector_paused():
            self._capture_sizes(platform, stream)
        platform.synchronize()
        logger.info("captured decode graphs for batch sizes %s", self.sizes)

    def _capture_sizes(self, platform: Platform, stream: Any) -> None:
        for bs in tqdm(list(reversed(self.sizes)), desc="capturing decode graphs", leave=False):
            fb = self._static_batch(bs)
            self.attn.init_metadata_capture(bs, fb)
            with platform.stream_context(stream):
                for _ in range(2):  # warm up: autotuning and lazy allocations stay out of the graph
                    self.model(fb.input_ids, fb.positions, fb)
            graph = platform.new_graph()
            with platform.graph_capture(graph, self.pool, stream):
                out = self.model(fb.input_ids, fb.positions, fb)
            self.graphs[bs] = graph
            self.outputs[bs] = out
            self.captured[bs] = {layer: fb.captured_hidden[layer] for layer in self.hidden_layers}

    def can_run(self, fb: ForwardBatch) -> bool:
        return (fb.forward_mode is ForwardMode.DECODE and fb.batch_size <= self.max_bs
                and all(name in fb.extras for name in self.row_inputs))

    def capture_verify(
        self, tokens_per_request: int, capture_hidden_layers: tuple[int, ...] = (), tree: bool = False,
        mode: ForwardMode = ForwardMode.TARGET_VERIFY, row_inputs: dict[str, int] | None = None,
    ) -> VerifyGraphs | None:
        """Graphs for speculation's verify forwards (chains, or with ``tree`` tree batches; with ``mode`` EXTEND a
        draft head's catch-up, fed ``row_inputs``) at this runner's batch sizes, in its memory pool; None (and a line
        in the log) where the attention backend cannot capture them."""
        from sgl.kernels.verify_graphs import VerifyGraphs

        if type(self.attn).init_verify_metadata_capture is AttentionBackend.init_verify_metadata_capture:
            _log_once(f"verify graphs are off: attention backend {type(self.attn).__name__} cannot capture a verify "
                      "batch; speculative verify forwards run eagerly")
            return None
        # NOTE: a verify graph's activations are those of bs x N tokens; at most a prefill chunk's, whose activations
        # the memory plan already leaves room for (a larger verify batch runs eagerly)
        chunk = int(getattr(self.runner.args, "chunked_prefill_size", 8192))
        limit = max(1, (chunk if chunk > 0 else 8192) // tokens_per_request)
        sizes = [s for s in self.sizes if s <= limit] or [1]
        if len(sizes) < len(self.sizes):
            _log_once(f"verify graphs up to {sizes[-1]} requests ({tokens_per_request} tokens each, within a prefill "
                      "chunk); larger verify batches run eagerly")
        return VerifyGraphs(self.runner, self.platform, sizes, self.pool, tokens_per_request,
                            capture_hidden_layers, tree, mode, row_inputs)

    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        bs = fb.batch_size
        padded = self.sizes[bisect.bisect_left(self.sizes, bs)]
        if padded != bs:
            self.req_pool_indices[bs:padded].fill_(self.runner.padding_req_slot)
            self.seq_lens[bs:padded].fill_(1)
            self.out_cache_loc[bs:padded].zero_()
            self.positions[bs:padded].zero_()
            self.input_ids[bs:padded].zero_()
        self.input_ids[:bs].copy_(fb.input_ids)
        self.positions[:bs].copy_(fb.positions)
        self.req_pool_indices[:bs].copy_(fb.req_pool_indices)
        self.seq_lens[:bs].copy_(fb.seq_lens)
        self.out_cache_loc[:bs].copy_(fb.out_cache_loc)
        for name, buf in self.row_inputs.items():
            buf[bs:padded].zero_()
            buf[:bs].copy_(fb.extras[name])
        static = self._replay_batches.get(padded)
        if static is None:  # NOTE: built once per size: a replay reads the same static buffers every time
            static = self._replay_batches[padded] = self._static_batch(padded)
        self.attn.init_metadata_replay(padded, static)
        self.graphs[padded].replay()
        fb.captured_hidden = {layer: t[:bs] for layer, t in self.captured[padded].items()}
        return self.outputs[padded][:bs]
