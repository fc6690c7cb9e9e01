"""Verify graphs: speculative TARGET_VERIFY forwards replayed from graphs, one per batch size at a fixed
``tokens_per_request`` (N, the chain's last token and its drafts), a batch padded up to the next captured size.

A verify forward runs every decode step that speculates, so eagerly it costs what an eager decode step costs (on a
small batch, launch-bound): graphs are what make speculation pay. The shape is fixed at ``bs x N`` rows, request i's
rows at ``i * N``; a request with fewer drafts fills its first rows and says how many in ``extend_seq_lens`` (a
device tensor the replay rewrites), so one graph per batch size serves every mix of draft counts.

The same graphs serve an EAGLE head's catch-up (``mode`` EXTEND: the accepted positions' features, at most N per
request, an extend over the head's KV), fed the features through static per-row inputs (``row_inputs``), as the
decode graphs feed a chained draft step.

NOTE: padding never touches a real request's cache. A short request's spare rows write their KV to slot 0 (the
padding sink) and nothing attends to them (they lie past its extend length, and the attention backend zero-fills
their outputs); a padded request points at the runner's spare request slot (its table row is all zeros, so it reads
and writes only the sink) with prefix 0 and N new tokens.
"""

from __future__ import annotations

import bisect
import logging
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode
from sgl.core.transfer import to_device
from sgl.kernels.capture_gc import collector_paused

if TYPE_CHECKING:
    from sgl.core.platform import Platform

logger = logging.getLogger(__name__)


class VerifyGraphs:
    """Captures ``model.forward`` for TARGET_VERIFY batches of up to ``tokens_per_request`` tokens per request (and
    the hidden layers ``capture_hidden_layers``, which EAGLE-3 reads) over static buffers, and replays it."""

    def __init__(
        self, runner: Any, platform: Platform, sizes: list[int], pool: Any, tokens_per_request: int,
        capture_hidden_layers: tuple[int, ...] = (), tree: bool = False, mode: ForwardMode = ForwardMode.TARGET_VERIFY,
        row_inputs: dict[str, int] | None = None,
    ) -> None:
        if tokens_per_request < 2:
            raise ValueError(f"a verify graph needs at least 2 tokens per request (got {tokens_per_request})")
        self.runner = runner
        self.platform = platform
        self.model = runner.model
        self.attn = runner.attn_backend
        self.sizes = sizes
        self.max_bs = sizes[-1]
        self.tokens = n = tokens_per_request
        self.hidden_layers = tuple(capture_hidden_layers)
        self.tree = tree  # NOTE: tree batches (a mask per request, packed by the backend at each replay), not chains
        self.mode = mode  # the batches served: TARGET_VERIFY, or EXTEND (a draft head's catch-up)
        self.pool = pool  # NOTE: the decode graphs' pool: verify and decode replays never overlap
        device = runner.device
        rows, reqs = self.max_bs * n, self.max_bs
        self.input_ids = torch.zeros(rows, dtype=torch.int64, device=device)
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)
        self.out_cache_loc = torch.zeros(rows, dtype=torch.int64, device=device)
        self.req_pool_indices = torch.full((reqs,), runner.padding_req_slot, dtype=torch.int64, device=device)
        self.prefix_lens = torch.zeros(reqs, dtype=torch.int64, device=device)
        self.extend_lens = torch.full((reqs,), n, dtype=torch.int64, device=device)
        self.seq_lens = torch.full((reqs,), n, dtype=torch.int64, device=device)
        self.extend_start_loc = torch.arange(reqs, dtype=torch.int64, device=device) * n
        # NOTE: per-row inputs the model reads from ``forward_batch.extras`` ({name: width}), rows as input_ids'
        self.row_inputs: dict[str, torch.Tensor] = {
            name: torch.zeros(rows, width, dtype=runner.dtype, device=device)
            for name, width in (row_inputs or {}).items()
        }
        runner.req_to_token_pool.req_to_token[runner.padding_req_slot].zero_()
        self.batches: dict[int, ForwardBatch] = {}
        self.graphs: dict[int, Any] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.captured: dict[int, dict[int, torch.Tensor]] = {}
        self.replays = 0  # how many verify forwards ran from a graph (tests read it)
        self._capture_all()

    def _static_batch(self, bs: int) -> ForwardBatch:
        r, n = self.runner, self.tokens
        return ForwardBatch(
            forward_mode=self.mode, batch_size=bs, input_ids=self.input_ids[: bs * n],
            positions=self.positions[: bs * n], req_pool_indices=self.req_pool_indices[:bs],
            seq_lens=self.seq_lens[:bs], out_cache_loc=self.out_cache_loc[: bs * n], seq_lens_cpu=[n] * bs,
            req_to_token_pool=r.req_to_token_pool, kv_pool=r.kv_pool, attn_backend=self.attn,
            extend_prefix_lens=self.prefix_lens[:bs], extend_seq_lens=self.extend_lens[:bs],
            extend_start_loc=self.extend_start_loc[:bs], extend_prefix_lens_cpu=[0] * bs,
            extend_seq_lens_cpu=[n] * bs, capture_hidden_layers=self.hidden_layers,
            tree_masks=[torch.ones(n, n, dtype=torch.bool).tril()] * bs if self.tree else None,
            extras={k: v[: bs * n] for k, v in self.row_inputs.items()},
        )

    @torch.inference_mode()
    def _capture_all(self) -> None:
        platform = self.platform
        stream = platform.new_stream()
        with collector_paused():
            for bs in tqdm(list(reversed(self.sizes)), desc="capturing verify graphs", leave=False):
                self._capture(bs, platform, stream)
        platform.synchronize()
        logger.info("captured %s %s graphs (%d tokens per request) for batch sizes %s",
                    "tree" if self.tree else "chain", self.mode.value, self.tokens, self.sizes)

    def _capture(self, bs: int, platform: Platform, stream: Any) -> None:
        fb = self.batches[bs] = self._static_batch(bs)
        self.attn.init_verify_metadata_capture(bs, self.tokens, fb)
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
        """A verify of at most ``max_bs`` requests and N tokens each, capturing what we did: a chain, or where the
        graphs are a tree's, a mask per request over its own tokens."""
        lens = fb.extend_seq_lens_cpu
        if not (fb.forward_mode is self.mode and 0 < fb.batch_size <= self.max_bs and lens is not None
                and max(lens) <= self.tokens and min(lens) >= 1 and fb.extend_prefix_lens is not None
                and tuple(fb.capture_hidden_layers) == self.hidden_layers
                and all(name in fb.extras and fb.extras[name].shape[-1] == buf.shape[-1]
                        for name, buf in self.row_inputs.items())):
            return False
        masks = fb.tree_masks
        if not self.tree:
            return masks is None
        return masks is not None and all(m is not None and m.shape == (e, e) for m, e in zip(masks, lens))

    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        """The final hidden states [T, hidden] of ``fb``'s rows, in its order (and ``fb.captured_hidden``), as
        fresh tensors: the graph's own buffers are overwritten by the next replay."""
        b, n = fb.batch_size, self.tokens
        self.replays += 1
        lens = fb.extend_seq_lens_cpu
        assert lens is not None and fb.extend_prefix_lens is not None
        padded = self.sizes[bisect.bisect_left(self.sizes, b)]
        self.req_pool_indices[:b].copy_(fb.req_pool_indices)
        self.seq_lens[:b].copy_(fb.seq_lens)
        self.prefix_lens[:b].copy_(fb.extend_prefix_lens)
        self.extend_lens[:b].copy_(fb.extend_seq_lens if fb.extend_seq_lens is not None else torch.tensor(lens))
        if padded != b:
            self.req_pool_indices[b:padded].fill_(self.runner.padding_req_slot)
            self.seq_lens[b:padded].fill_(n)
            self.prefix_lens[b:padded].zero_()
            self.extend_lens[b:padded].fill_(n)
        count = sum(lens)
        rows: torch.Tensor | None = None  # where fb's tokens sit among the graph's rows (None: the first ``count``)
        # NOTE: one request's tokens are the first rows whatever its length (batch 1: no index to build and send)
        if b > 1 and count != b * n:
            host = torch.tensor([i * n + j for i, e in enumerate(lens) for j in range(e)], dtype=torch.int64)
            rows = to_device(host, self.input_ids.device, bool(self.platform.capabilities.pinned_memory))
        spare = 0 if rows is not None else count  # NOTE: every row from here on is padding this replay
        inputs = [(self.input_ids, fb.input_ids), (self.positions, fb.positions),
                  (self.out_cache_loc, fb.out_cache_loc), *((buf, fb.extras[k]) for k, buf in self.row_inputs.items())]
        for static, given in inputs:
            static[spare : padded * n].zero_()
            if rows is None:
                static[:count].copy_(given)
            else:
                static.index_copy_(0, rows, given.to(static.dtype))
        static_fb = self.batches[padded]
        if self.tree:
            static_fb.tree_masks = fb.tree_masks  # NOTE: host masks, packed by the backend's replay hook
        self.attn.init_verify_metadata_replay(padded, n, static_fb)
        self.graphs[padded].replay()
        fb.captured_hidden = {layer: _rows(t, rows, count) for layer, t in self.captured[padded].items()}
        return _rows(self.outputs[padded], rows, count)


def _rows(t: torch.Tensor, rows: torch.Tensor | None, count: int) -> torch.Tensor:
    return t[:count].clone() if rows is None else t.index_select(0, rows)
