"""CUDA graphs for decode: one captured graph per batch size, a batch padded up to the next captured size.

Decode steps of a small model are launch-bound: a graph replays every kernel of the forward with one launch.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

import torch
from tqdm import tqdm

from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode

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


class CudaGraphRunner:
    """Captures ``model.forward`` for DECODE batches over static input buffers and replays it.

    NOTE: padded rows point at the runner's spare request slot with seq_len 1 and write their KV to slot 0, the
    padding sink, so they never touch a real request's cache.
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner
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
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool: Any = None
        self.attn.init_graph_state(self.max_bs, runner.context_len)
        self._capture_all()

    def _static_batch(self, bs: int) -> ForwardBatch:
        r = self.runner
        return ForwardBatch(
            forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=self.input_ids[:bs],
            positions=self.positions[:bs], req_pool_indices=self.req_pool_indices[:bs], seq_lens=self.seq_lens[:bs],
            out_cache_loc=self.out_cache_loc[:bs], seq_lens_cpu=[1] * bs, req_to_token_pool=r.req_to_token_pool,
            kv_pool=r.kv_pool, attn_backend=self.attn,
        )

    @torch.inference_mode()
    def _capture_all(self) -> None:
        stream = torch.cuda.Stream()
        for bs in tqdm(list(reversed(self.sizes)), desc="capturing decode graphs", leave=False):
            fb = self._static_batch(bs)
            self.attn.init_metadata_capture(bs, fb)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up: autotuning and lazy allocations stay out of the graph
                    self.model(fb.input_ids, fb.positions, fb)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                out = self.model(fb.input_ids, fb.positions, fb)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
            self.outputs[bs] = out
        torch.cuda.synchronize()
        logger.info("captured decode graphs for batch sizes %s", self.sizes)

    def can_run(self, fb: ForwardBatch) -> bool:
        return fb.forward_mode is ForwardMode.DECODE and fb.batch_size <= self.max_bs

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
        static = self._static_batch(padded)
        self.attn.init_metadata_replay(padded, static)
        self.graphs[padded].replay()
        return self.outputs[padded][:bs]
