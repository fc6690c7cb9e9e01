"""ModelRunner: builds the model, the KV pool and the attention backend on the platform, and runs forwards."""

from __future__ import annotations

import logging
from typing import Any

import torch

from sgl.core.config import ServerArgs
from sgl.core.distributed.communicator import SINGLE, ParallelState
from sgl.core.distributed.tp_sampler import RankZeroTokens
from sgl.core.faults import fault_injector
from sgl.core.memory.kv_pool import model_kv_layout
from sgl.core.memory.req_to_token import ReqToTokenPool
from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.model.moe import FusedMoE
from sgl.core.platform import Platform
from sgl.core.plugins import Plugins, get_plugins
from sgl.core.quant.base import select_quantization
from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode
from sgl.core.runner.memory_plan import plan_memory

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_KV_CACHE_DTYPES = {"fp8_e5m2": torch.float8_e5m2}  # fp8_e4m3 is the platform's answer (Platform.fp8_dtype)


def resolve_dtype(args: ServerArgs, platform: Platform, config: ModelConfig) -> torch.dtype:
    if args.dtype != "auto":
        return _DTYPES[args.dtype]
    if platform.device_type == "cpu":
        return torch.float32
    dtype = config.torch_dtype
    if dtype == torch.bfloat16 and not platform.capabilities.bf16:
        return torch.float16
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


def resolve_kv_cache_dtype(args: ServerArgs, dtype: torch.dtype, platform: Platform | None = None) -> torch.dtype:
    """The KV pool's storage dtype: the compute dtype unless --kv-cache-dtype narrows it; fp8_e4m3 is the platform's
    e4m3 encoding (``Platform.fp8_dtype``: float8_e4m3fn, or float8_e4m3fnuz on AMD MI300).

    NOTE: no platform capability gates fp8 storage: every reader upcasts what it loads, so only casts are needed, and
    torch has them on every device (the CPU reference included). Capabilities.fp8 is about fp8 matmuls.
    """
    if args.kv_cache_dtype == "fp8_e4m3":
        return platform.fp8_dtype() if platform is not None else torch.float8_e4m3fn
    return _KV_CACHE_DTYPES.get(args.kv_cache_dtype, dtype)


class ModelRunner:
    """One per tensor-parallel rank. Owns the model, the KV pool, the request-to-token table and the sampler."""

    def __init__(
        self, args: ServerArgs, platform: Platform, model_path: str, parallel: ParallelState = SINGLE,
        plugins: Plugins | None = None, architecture: str | None = None,
    ) -> None:
        """``architecture`` replaces the config's (a speculative draft whose checkpoint names its target's)."""
        self.args = args
        self.platform = platform
        self.parallel = parallel
        self.faults = fault_injector()  # NOTE: None unless a test sets SGL_FAULT_INJECT
        self.last_forward = "none yet"  # what the latest forward ran, for the watchdog's log line
        self.in_forward = False
        plugins = plugins or get_plugins()
        self.attention_backends = plugins.attention_backends  # read by Platform.attention_backend
        platform.set_device(parallel.device)
        self.device = platform.device(parallel.device)
        self.model_config = ModelConfig.from_dir(model_path)
        self.dtype = resolve_dtype(args, platform, self.model_config)
        self.kv_dtype = resolve_kv_cache_dtype(args, self.dtype, platform)
        self.quantization = select_quantization(
            args.quantization, self.model_config.get("quantization_config"), plugins.quantization_methods, platform
        )
        ctx = ModelContext.from_platform(
            platform, self.dtype, parallel, self.device, self.quantization, layer_fusion=args.enable_layer_fusion
        )
        self.model: Any  # an architecture class from the model registry (forward, compute_logits)
        self.model, _ = load_model(
            model_path, ctx, load_format=args.load_format, seed=args.random_seed, models=plugins.models,
            architecture=architecture,
        )
        self.model.eval()
        cfg = self.model_config
        self.context_len = args.context_length or cfg.max_position_embeddings
        self.vocab_size = cfg.vocab_size
        if parallel.ep_size > 1 and not any(isinstance(m, FusedMoE) for m in self.model.modules()):
            raise ValueError(f"--ep-size {parallel.ep_size}: {self.model_config.architecture} has no experts to spread")
        weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        kv_heads = max(1, cfg.num_kv_heads // parallel.tp_size)
        layout = model_kv_layout(self.model, kv_heads, cfg.head_dim)
        # NOTE: a model may cache other than its config's layers (a draft head read from its target's checkpoint)
        kv_layers = int(getattr(self.model, "kv_cache_layers", cfg.num_layers))
        self.plan = plan_memory(
            args, platform, num_layers=kv_layers, num_kv_heads=layout.num_kv_heads, head_dim=layout.head_dim,
            kv_dtype=self.kv_dtype, context_len=self.context_len, weight_bytes=weight_bytes,
            bytes_per_token=layout.bytes_per_token(kv_layers, self.kv_dtype),
        )
        # NOTE: every rank runs the same schedule, so every rank's pools must be the same size: the smallest wins
        sizes = [self.plan.max_total_tokens, self.plan.max_running_requests]
        if parallel.tp_size > 1:
            sizes = parallel.control_comm.min_ints(sizes)
        self.max_total_tokens, self.max_running_requests = sizes
        self.kv_pool = layout.make_pool(self.max_total_tokens, args.page_size, kv_layers, self.kv_dtype, self.device)
        # NOTE: one spare row so padded graph batches can point at a request slot no real request owns.
        self.req_to_token_pool = ReqToTokenPool(
            self.max_running_requests + 1, self.context_len + 8, self.device, bool(platform.capabilities.pinned_memory)
        )
        self.padding_req_slot = self.req_to_token_pool.alloc()
        name = args.attention_backend or platform.default_attention_backend()
        self.attn_backend = platform.attention_backend(name, self)
        self.attention_backend_name = name
        self.sampler: Any = platform.sampler()  # the platform's Sampler, or it wrapped for TP
        if parallel.tp_size > 1:
            self.sampler = RankZeroTokens(self.sampler, parallel)
        self.graph_hidden_layers: tuple[int, ...] = ()  # what decode graphs capture besides (capture_hidden_in_graphs)
        self.graph_runner = None if args.disable_cuda_graph else platform.graph_runner(self)
        if self.graph_runner is not None and parallel.ep_size > 1:
            # NOTE: expert-parallel dispatch sizes depend on the routing, read on the host each forward
            logger.info("decode graphs are off: expert-parallel dispatch sizes change with every batch")
            self.graph_runner = None
        self.verify_graphs: Any = None  # speculation's verify graphs, once ``capture_verify_graphs`` made them
        logger.info(
            "model %s on %s (%s, KV cache %s, %s attention, graphs %s)",
            cfg.architecture, platform.name, str(self.dtype).replace("torch.", ""),
            str(self.kv_dtype).replace("torch.", ""), name,
            "on" if self.graph_runner is not None else "off",
        )

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """Returns the final hidden states [T, hidden]."""
        self.last_forward = (f"{fb.forward_mode.name.lower()} forward of {fb.batch_size} request(s), "
                             f"{fb.input_ids.shape[0]} token(s)")
        self.in_forward = True
        try:
            if self.faults is not None:
                self.faults.at("forward")
            # NOTE: a decode graph records the hidden layers it was captured with (``hidden_layers``, none unless
            # capture_hidden_in_graphs asked); a forward asking for others runs eagerly
            graphs = self.graph_runner
            if (graphs is not None and tuple(fb.capture_hidden_layers) == tuple(getattr(graphs, "hidden_layers", ()))
                    and graphs.can_run(fb)):
                return graphs.replay(fb)
            if self.verify_graphs is not None and self.verify_graphs.can_run(fb):
                return self.verify_graphs.replay(fb)
            self.attn_backend.init_forward_metadata(fb)
            return self.model(fb.input_ids, fb.positions, fb)
        finally:
            self.in_forward = False

    def capture_verify_graphs(
        self, tokens_per_request: int, capture_hidden_layers: tuple[int, ...] = (), tree: bool = False,
        mode: ForwardMode = ForwardMode.TARGET_VERIFY, row_inputs: dict[str, int] | None = None,
    ) -> bool:
        """Speculation's verify forwards (TARGET_VERIFY, up to ``tokens_per_request`` tokens per request, the hidden
        layers ``capture_hidden_layers`` captured; chains, or with ``tree`` tree batches with a mask per request)
        replayed from graphs, where this runner's graph runner can capture them (``capture_verify``); else they stay
        eager. True when graphs were captured. ``mode`` EXTEND with ``row_inputs`` ({extras name: width}): a draft
        head's catch-up extends instead (at most ``tokens_per_request`` positions per request), fed per-row features.

        NOTE: the verify graphs keep the model as it is now: a feature that rewires its layers later (LoRA) must
        capture them again or drop them."""
        capture = getattr(self.graph_runner, "capture_verify", None)
        if capture is None:
            reason = "graphs are off" if self.graph_runner is None else "the graph runner has no verify graphs"
            logger.info("speculative %s forwards run eagerly: %s", mode.value, reason)
            self.verify_graphs = None
            return False
        extra = {} if mode is ForwardMode.TARGET_VERIFY and not row_inputs else {"mode": mode, "row_inputs": row_inputs}
        self.verify_graphs = capture(tokens_per_request, tuple(capture_hidden_layers), tree, **extra)
        return self.verify_graphs is not None

    def capture_hidden_in_graphs(self, layers: tuple[int, ...]) -> None:
        """Decode graphs captured again, now also recording the residual streams entering ``layers`` (a draft head
        reading the target's middle layers at every step, EAGLE-3), so those decode steps replay too. Graphs that are
        off stay off."""
        if self.graph_runner is None or tuple(layers) == self.graph_hidden_layers:
            return
        self.graph_hidden_layers = tuple(layers)
        self.graph_runner = None  # NOTE: the old graphs go before the new ones take memory
        self.graph_runner = self.platform.graph_runner(self)

    def describe_step(self) -> str:
        """The step a stalled scheduler is stuck in: inside a forward (a kernel, a collective) or after it."""
        where = "inside" if self.in_forward else "after (waiting on its results or scheduling)"
        return f"{where} the {self.last_forward}"

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden)
