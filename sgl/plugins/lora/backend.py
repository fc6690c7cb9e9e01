"""The LoRA backends: adapters by name, a device pool of slots, and the layer hooks that add each row's update.

``torch`` runs the reference (a gather per adapter slot); ``triton`` runs the segment GEMMs of ``sgl.kernels.lora``
where the platform has Triton and says once that it falls back to the reference where it has not.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sgl.core.ipc import FinishReason
from sgl.core.lora.base import AdapterInfo, LoRABackend, parse_lora_paths
from sgl.plugins.lora.apply import ApplyFn, apply_reference, apply_triton
from sgl.plugins.lora.peft_adapter import AdapterWeights, load_adapter_weights
from sgl.plugins.lora.pool import AdapterPool, LayerBuffers
from sgl.plugins.lora.segments import BatchSegments, GraphSegments, build_segments
from sgl.plugins.lora.targets import SUPPORTED, Target, projection_of, projection_targets, resolve_target_modules

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.model.linear import LinearBase
    from sgl.core.runner.forward_batch import ForwardBatch
    from sgl.core.runner.model_runner import ModelRunner
    from sgl.core.scheduler.batch import ScheduleBatch
    from sgl.core.scheduler.req import Req

logger = logging.getLogger(__name__)
DEFAULT_MAX_RANK = 64


@dataclass
class _Adapter:
    uid: int  # never reused: it is also the adapter's prefix-cache namespace
    info: AdapterInfo
    weights: AdapterWeights
    refs: int = 0  # admitted requests not yet released
    active: int = 0  # of those, the ones let into batches (they count toward --max-loras-per-batch)
    unloaded: bool = False  # no new requests; freed when refs reaches 0


@dataclass
class _ReqLoRA:
    uid: int
    active: bool = False


class LoRAHook:
    """The ``LinearBase.adapter`` of one adapted layer: adds this batch's low-rank updates to its output."""

    def __init__(self, backend: TorchLoRABackend, buffers: LayerBuffers) -> None:
        self.backend = backend
        self.buffers = buffers

    def __call__(self, layer: LinearBase, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # NOTE: a graph being captured records the kernels over the graph segments, which each replay's
        # before_forward rewrites; eager forwards use the segments built for their own batch
        graph = self.backend.graph_segments
        seg = graph.segments if graph is not None and self.backend.capturing else self.backend.segments
        if seg is None or seg.empty:
            return out
        b = self.buffers
        self.backend.apply_fn(x, out, b.a, b.bs, b.slices, self.backend.pool.rank, seg)
        return out


class TorchLoRABackend(LoRABackend):
    """Multi-LoRA over the torch reference; the Triton backend differs only in ``apply_fn``."""

    apply_fn: ApplyFn

    def __init__(self, runner: ModelRunner, targets: dict[str, Target], allowed: tuple[str, ...], max_rank: int,
                 max_per_batch: int, max_loaded: int | None, apply_fn: ApplyFn) -> None:
        self.runner = runner
        self.targets = targets
        self.allowed = allowed
        self.max_rank = max_rank
        self.max_per_batch = max_per_batch
        self.max_loaded = max_loaded
        self.apply_fn = apply_fn
        self.pinned = bool(runner.platform.capabilities.pinned_memory)
        adapted = {m: t for m, t in targets.items() if projection_of(m) in allowed}
        self.pool = AdapterPool(adapted, max_per_batch, max_rank, runner.dtype, runner.device)
        self._hooked = [buf.layer for buf in self.pool.layers.values()]
        for buf in self.pool.layers.values():
            buf.layer.adapter = LoRAHook(self, buf)
        self._uids = itertools.count(1)
        self._names: dict[str, int] = {}
        self._by_uid: dict[int, _Adapter] = {}
        self.segments: BatchSegments | None = None
        self.graph_segments: GraphSegments | None = None  # set where decode graphs run with the adapters
        self.capturing = False

    # startup ----------------------------------------------------------------------------------------------------
    @classmethod
    def _apply_fn(cls, runner: ModelRunner) -> ApplyFn:
        return apply_reference

    @classmethod
    def create(cls, server_args: ServerArgs, runner: ModelRunner) -> LoRABackend:
        args = server_args
        if args.speculative_algorithm:
            # NOTE: verify forwards (and their graphs) do not call before_forward, so they would run without the
            # batch's adapter segments: the base model's tokens for an adapter's request
            raise ValueError("--enable-lora with --speculative-algorithm is not supported yet: speculative verify "
                             "forwards do not apply the adapters")
        if runner.parallel.tp_size > 1:
            raise ValueError("LoRA adapters with tensor parallelism are not supported yet")
        targets = projection_targets(runner.model)
        if not targets:
            raise ValueError(f"{runner.model_config.architecture} has no q/k/v/o/gate/up/down projections to adapt")
        initial = parse_lora_paths(args.lora_paths)
        # NOTE: the startup adapters are read once, against every projection, to learn the rank and the modules the
        # pool must cover when the flags leave them open; each is then checked against the flags as any load is.
        rank_cap = args.max_lora_rank or 1 << 20
        read = {n: load_adapter_weights(p, targets, SUPPORTED, rank_cap, runner.dtype) for n, p in initial.items()}
        max_rank = args.max_lora_rank or max((w.rank for w in read.values()), default=DEFAULT_MAX_RANK)
        used = {p for w in read.values() for p in w.target_modules}
        allowed = resolve_target_modules(args.lora_target_modules, used)
        if args.max_loaded_loras is not None and len(initial) > args.max_loaded_loras:
            raise ValueError(f"--lora-paths names {len(initial)} adapters; --max-loaded-loras is {args.max_loaded_loras}")
        backend = cls(runner, targets, allowed, max_rank, args.max_loras_per_batch, args.max_loaded_loras,
                      cls._apply_fn(runner))
        for name, path in initial.items():
            backend._register(name, path, read[name])
        if runner.graph_runner is not None:
            backend._graphs_with_adapters(runner)
        logger.info("LoRA: %d adapter(s), rank <= %d, %d slot(s), targets %s", len(initial), max_rank,
                    args.max_loras_per_batch, " ".join(allowed))
        return backend

    def _graphs_with_adapters(self, runner: ModelRunner) -> None:
        """The runner captured its decode graphs before the adapter hooks existed: recapture them through the graph
        segments (where the backend's kernels can be captured), else turn graphs off."""
        runner.verify_graphs = None  # NOTE: speculation's verify graphs were captured without the adapter hooks
        if self.apply_fn is not apply_triton:
            # NOTE: the reference gathers rows per adapter on the host's say-so: a graph would replay stale ones
            logger.info("LoRA: decode graphs are off: the torch reference's updates cannot be captured "
                        "(--lora-backend triton's can)")
            runner.graph_runner = None
            return
        self.graph_segments = GraphSegments(self.pool.num_slots, runner.graph_runner.max_bs, runner.device,
                                            self.pinned)
        runner.graph_runner = None
        self.capturing = True
        try:
            runner.graph_runner = runner.platform.graph_runner(runner)
        finally:
            self.capturing = False
        logger.info("LoRA: decode graphs recaptured with the adapter updates (one segment per slot)")

    # adapters ---------------------------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        if name in self._names:
            raise ValueError(f"an adapter named {name!r} is already loaded")
        if self.max_loaded is not None and len(self._names) >= self.max_loaded:
            raise ValueError(f"{len(self._names)} adapters are loaded, the most --max-loaded-loras allows; "
                             "unload one first")
        weights = load_adapter_weights(path, self.targets, self.allowed, self.max_rank, self.runner.dtype)
        return self._register(name, path, weights)

    def _register(self, name: str, path: str, weights: AdapterWeights) -> AdapterInfo:
        bad = [p for p in weights.target_modules if p not in self.allowed]
        if bad:
            raise ValueError(f"{path}: targets {', '.join(bad)}, which --lora-target-modules leaves out")
        info = AdapterInfo(name, path, weights.rank, weights.target_modules)
        uid = next(self._uids)
        self._by_uid[uid] = _Adapter(uid, info, weights)
        self._names[name] = uid
        return info

    def unload_adapter(self, name: str) -> None:
        uid = self._names.pop(name, None)
        if uid is None:
            raise ValueError(f"no LoRA adapter named {name!r} is loaded; loaded: {self._loaded_names()}")
        ad = self._by_uid[uid]
        ad.unloaded = True
        if ad.refs == 0:
            self._forget(ad)

    def _forget(self, ad: _Adapter) -> None:
        self.pool.drop(ad.uid)
        del self._by_uid[ad.uid]

    def adapters(self) -> list[AdapterInfo]:
        return [self._by_uid[u].info for u in self._names.values()]

    def _loaded_names(self) -> str:
        return ", ".join(sorted(self._names)) or "none"

    # scheduler points ---------------------------------------------------------------------------------------------
    def admit(self, req: Req) -> FinishReason | None:
        name = req.lora_path
        if name is None:
            return None
        uid = self._names.get(name)
        if uid is None:
            return FinishReason("abort", message=f"LoRA adapter {name!r} is not loaded; loaded: "
                                f"{self._loaded_names()}", status_code=400)
        self._by_uid[uid].refs += 1
        req.features[self.name] = _ReqLoRA(uid)
        req.cache_namespace = uid
        return None

    def ready(self, req: Req) -> bool:
        """Lets a request into batches while at most ``--max-loras-per-batch`` adapters are in use at once."""
        st: _ReqLoRA | None = req.features.get(self.name)
        if st is None or st.active:
            return True
        ad = self._by_uid[st.uid]
        if ad.active == 0 and sum(1 for a in self._by_uid.values() if a.active) >= self.max_per_batch:
            return False
        ad.active += 1
        st.active = True
        return True

    def before_forward(self, batch: ScheduleBatch, forward_batch: ForwardBatch) -> None:
        states: list[_ReqLoRA | None] = [r.features.get(self.name) for r in batch.reqs]
        graphed = self.graph_segments is not None and batch.mode.is_decode and len(batch) <= self.graph_segments.max_rows
        if all(st is None for st in states):
            self.segments = None
            if graphed:
                self.graph_segments.fill([])  # type: ignore[union-attr]
            return
        busy = {u for u, a in self._by_uid.items() if a.active}
        slots = [-1 if st is None else self.pool.slot(st.uid, self._by_uid[st.uid].weights, busy) for st in states]
        counts = [1] * len(batch) if batch.mode.is_decode else list(batch.extend_lens)
        self.segments = build_segments(counts, slots, forward_batch.input_ids.device, self.pinned)
        if graphed:  # NOTE: a decode batch the graphs replay reads these (a larger one runs eagerly on the above)
            self.graph_segments.fill(slots)  # type: ignore[union-attr]

    def release(self, req: Req) -> None:
        st: _ReqLoRA | None = req.features.pop(self.name, None)
        if st is None:
            return
        ad = self._by_uid[st.uid]
        ad.refs -= 1
        if st.active:
            ad.active -= 1
        if ad.unloaded and ad.refs == 0:
            self._forget(ad)

    def info(self) -> dict[str, Any]:
        return {"lora_adapters": len(self._names), "lora_resident_slots": self.pool.resident()}

    def close(self) -> None:
        for layer in self._hooked:
            layer.adapter = None


class TritonLoRABackend(TorchLoRABackend):
    """The segment GEMMs of ``sgl.kernels.lora`` (SGMV-style) where the platform runs Triton."""

    @classmethod
    def _apply_fn(cls, runner: ModelRunner) -> ApplyFn:
        if runner.platform.capabilities.triton:
            return apply_triton
        logger.info("LoRA: platform %s has no Triton; the triton backend runs the torch reference",
                    runner.platform.name)
        return apply_reference
