"""ServerArgs: the single source of truth for configuration. The CLI and its validation are generated from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sgl.core.distributed.parallel_flags import check_parallel_args
from sgl.core.sglang_flags import SGLANG_FLAGS, check_sglang_flags

SCHEDULE_POLICIES = ("lpm", "dfs-weight", "fcfs")
LOAD_FORMATS = ("auto", "safetensors", "dummy")
DTYPES = ("auto", "float32", "bfloat16", "float16", "half", "float")
DTYPE_SPELLINGS = {"half": "float16", "float": "float32"}  # SGLang's other names, normalised on construction
KV_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2")
LOAD_BALANCE_METHODS = ("round_robin", "shortest_queue", "cache_aware")
DEFAULT_GRAMMAR_BACKEND = "auto"  # the first grammar backend a plugin registers; "none" turns constraints off


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, aliases: tuple[str, ...] = ()) -> Any:
    """A field with its help, its allowed values and SGLang's other spellings of its flag (``--device``)."""
    return field(default=default, metadata={"help": help, "choices": choices, "aliases": aliases})


@dataclass(frozen=True)
class ServerArgs:
    # model ------------------------------------------------------------------------------------------------------
    model_path: str | None = _opt(
        None, "model directory or Hugging Face Hub id (org/name, downloaded once into the Hub cache); the demo model "
        "when omitted", aliases=("--model",)
    )
    tokenizer_path: str | None = _opt(None, "tokenizer directory or Hub id (default: the model's)")
    revision: str | None = _opt(None, "Hub branch, tag or commit of a Hub id (default: main)")
    download_dir: str | None = _opt(None, "Hugging Face cache directory for Hub ids (default: HF_HUB_CACHE)")
    load_format: str = _opt("auto", "weights: safetensors from the directory, or seeded random ('dummy')", LOAD_FORMATS)
    dtype: str = _opt("auto", "compute and weight dtype; auto = the config's torch_dtype on GPU, float32 on CPU", DTYPES)
    kv_cache_dtype: str = _opt(
        "auto",
        "KV cache storage dtype; auto = the compute dtype; fp8_* store one byte per value (unscaled, saturating)",
        KV_CACHE_DTYPES,
    )
    context_length: int | None = _opt(None, "maximum tokens per request (default: the model's max_position_embeddings)")
    served_model_name: str | None = _opt(None, "model id reported by the API (default: the model path)")
    chat_template: str | None = _opt(
        None, "chat template of the chat routes: a .jinja file, or the name of one of the model's own templates",
        aliases=("--hf-chat-template-name",),
    )
    random_seed: int = _opt(0, "seed of the device's random generator (unseeded sampling) and of dummy weights")
    # hardware ---------------------------------------------------------------------------------------------------
    backend: str | None = _opt(
        None, "platform plugin (cpu, cuda, ...); default: SGL_BACKEND, else the first available", aliases=("--device",)
    )
    attention_backend: str | None = _opt(None, "attention backend name (default: the platform's choice)")
    # parallelism (sgl/core/distributed, docs/serving.md "Parallelism") -----------------------------------------
    tp_size: int = _opt(1, "tensor-parallel ranks: one scheduler process per rank, each on its device",
                        aliases=("--tp", "--tensor-parallel-size"))
    dp_size: int = _opt(1, "data-parallel replicas (each of --tp-size ranks) behind one dispatcher",
                        aliases=("--dp", "--data-parallel-size"))
    ep_size: int = _opt(1, "expert-parallel ranks, 1 or --tp-size: each rank holds 1/ep of every MoE layer's experts "
                           "whole and tokens reach them by all-to-all (default: every expert split over the TP ranks)",
                        aliases=("--ep", "--expert-parallel-size"))
    load_balance_method: str = _opt(
        "round_robin", "how the dispatcher picks a data-parallel replica; cache_aware: where the prompt's prefix is "
        "cached, unless the replicas' loads differ too much", LOAD_BALANCE_METHODS)
    nnodes: int = _opt(1, "machines the tensor-parallel ranks span (tp-size / nnodes ranks on each)")
    node_rank: int = _opt(0, "this machine's index among --nnodes; node 0 serves HTTP, the others run ranks only")
    dist_init_addr: str | None = _opt(
        None, "host:port of node 0's torch.distributed TCP store (needed with --nnodes > 1; default: 127.0.0.1 and "
        "a free port)", aliases=("--nccl-init-addr",))
    nccl_port: int | None = _opt(None, "port of the TCP store when --dist-init-addr is not given (default: free)")
    dist_timeout: int | None = _opt(
        None, "seconds a collective may wait for its peers before the rank fails (default: --watchdog-timeout)")
    base_gpu_id: int = _opt(0, "device index of this node's first rank")
    gpu_id_step: int = _opt(1, "device index step between consecutive ranks of a node")
    # memory -----------------------------------------------------------------------------------------------------
    mem_fraction_static: float = _opt(0.85, "fraction of free device memory for weights and KV cache")
    max_total_tokens: int | None = _opt(None, "KV pool size in tokens (overrides --mem-fraction-static)")
    page_size: int = _opt(1, "tokens per KV page")
    max_running_requests: int | None = _opt(None, "maximum requests decoding at once")
    # scheduling -------------------------------------------------------------------------------------------------
    stream_interval: int = _opt(
        1, "a streamed request hears of its new tokens every N tokens (its first and last at once): fewer, larger "
        "events cost the API process less per token",
    )
    chunked_prefill_size: int = _opt(8192, "maximum new tokens in one prefill step; -1 disables chunking")
    max_prefill_tokens: int = _opt(16384, "token budget of one prefill batch")
    schedule_policy: str = _opt("lpm", "waiting-queue order", SCHEDULE_POLICIES)
    schedule_conservativeness: float = _opt(1.0, "scale of the KV reserve kept for running decodes")
    disable_radix_cache: bool = _opt(False, "do not share prefixes between requests")
    enable_mixed_chunk: bool = _opt(False, "run the running decodes in the same forward as a prefill chunk (MIXED)")
    disable_overlap_schedule: bool = _opt(False, "run the plain loop even where the platform supports overlap")
    force_overlap_schedule: bool = _opt(False, "run the overlap loop even where the platform does not ask for it")
    disable_cuda_graph: bool = _opt(False, "do not capture graphs (decode, speculative verify and draft steps)")
    cuda_graph_max_bs: int = _opt(256, "largest decode batch captured as a graph")
    enable_layer_fusion: bool = _opt(
        False, "fuse each decode layer's small ops (q/k norm + rope + KV store in one kernel, the activation in the "
        "down projection, split-K and decode-attention merges in-kernel); off until its GPU test has run",
    )
    # grammar ----------------------------------------------------------------------------------------------------
    grammar_backend: str = _opt(
        DEFAULT_GRAMMAR_BACKEND,
        "grammar backend for json_schema/regex/ebnf/choices: a registered name (see `sgl plugins`), auto = the first "
        "installed, none = off",
    )
    grammar_compile_timeout: float = _opt(30.0, "seconds a grammar may take to compile before its request fails")
    disable_jump_forward: bool = _opt(
        False, "sample every token of a constrained request, even text its grammar forces (jump-forward appends that "
        "text and computes it in one extend step; it needs the radix cache)"
    )
    # features: names looked up in registries that plugins fill (`sgl plugins` lists them) ------------------------
    quantization: str | None = _opt(
        None, "quantization method; default: the checkpoint's quantization_config (quant_method), else none"
    )
    speculative_algorithm: str | None = _opt(None, "speculative decoding algorithm; default: off")
    speculative_draft_model_path: str | None = _opt(
        None, "the draft model's directory or Hub id (STANDALONE; it must share the target's tokenizer)"
    )
    speculative_draft_model_revision: str | None = _opt(None, "Hub branch, tag or commit of a Hub id draft model")
    speculative_num_steps: int | None = _opt(None, "draft forwards (draft tokens) per step; default: the algorithm's")
    speculative_eagle_topk: int | None = _opt(None, "branches per draft step: 1 a chain; > 1 an EAGLE-2 tree (EAGLE, EAGLE3)")
    speculative_num_draft_tokens: int | None = _opt(
        None, "tokens verified per request per speculative step, its last token included (so N - 1 drafts); "
        "default: the algorithm's"
    )
    speculative_ngram_min_match_window_size: int = _opt(1, "NGRAM: the shortest suffix matched")
    speculative_ngram_max_match_window_size: int = _opt(12, "NGRAM: the longest suffix matched (tried first)")
    speculative_ngram_branch_length: int = _opt(18, "NGRAM: the longest continuation drafted from a match")
    speculative_ngram_capacity: int = _opt(
        10_000_000, "NGRAM: n-grams kept from recent requests (0: draft from a request's own tokens only)"
    )
    disable_speculative_gate: bool = _opt(
        False, "always draft, at every batch size (default: per batch size, the scheduler measures tokens/s with and "
               "without drafts and runs the faster)"
    )
    enable_lora: bool = _opt(
        False, "serve LoRA adapters (implied by the other LoRA flags, --max-loras-per-batch aside)"
    )
    lora_paths: list[str] | None = _opt(
        None, "adapters to load at startup, each NAME=PATH or PATH (named by its path); PEFT directories"
    )
    max_loras_per_batch: int = _opt(8, "most distinct adapters in one batch (device slots)")
    max_loaded_loras: int | None = _opt(None, "most adapters loaded at once, in host memory (default: no limit)")
    max_lora_rank: int | None = _opt(
        None, "largest adapter rank that can be loaded (default: the largest of --lora-paths, else 64)"
    )
    lora_target_modules: list[str] | None = _opt(
        None, "projections adapters may target: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or all "
        "(default: those of --lora-paths, else all)"
    )
    lora_backend: str | None = _opt(None, "LoRA backend (see `sgl plugins`); default with LoRA on: triton")
    # tool calling (issue 19) --------------------------------------------------------------------------------------
    tool_call_parser: str | None = _opt(
        None, "how the model writes tool calls (qwen25, llama3, mistral, pythonic, deepseekv3, ...; see `sgl plugins`):"
        " chat completions accept tools and answer message.tool_calls"
    )
    reasoning_parser: str | None = _opt(
        None, "how the model marks its thinking (qwen3, deepseek-r1): chat completions answer it as reasoning_content"
    )
    is_embedding: bool = _opt(
        False, "serve the model as an embedding model: /v1/embeddings and Engine.encode (mean or last-token pooling "
        "as its sentence-transformers config says, normalized)"
    )
    plugin_args: Mapping[str, Any] = field(
        default_factory=dict,
        metadata={"help": "each plugin's own options, {plugin name: its dataclass} (the CLI's --<plugin>-* flags)",
                  "cli": False},
    )
    # server -----------------------------------------------------------------------------------------------------
    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(30000, "port to listen on")
    api_key: str | None = _opt(None, "require 'Authorization: Bearer KEY' on every route but health")
    allowed_origins: str | None = _opt(None, "comma-separated CORS origins (CORS is off unless set)")
    max_request_bytes: int = _opt(16 * 1024 * 1024, "largest accepted request body in bytes")
    max_n: int = _opt(64, "largest n (choices per request)")
    max_new_tokens_limit: int | None = _opt(None, "cap on max_tokens per request (default: the context length)")
    shutdown_timeout: float = _opt(30.0, "seconds to drain running requests on SIGTERM")
    # hardening (issue 21): limits and the watchdog, documented together in docs/serving.md
    watchdog_timeout: float = _opt(
        300.0, "seconds one scheduler step (a forward, a collective) may run before the server exits non-zero")
    max_queued_requests: int | None = _opt(
        8192, "most requests waiting to be scheduled; more are refused with 503 and Retry-After (sgl.Engine: no "
        "bound unless given, its caller submits whole batches)")
    log_level: str = _opt("info", "logging level")
    log_requests: bool = _opt(False, "log each request's metadata")
    decode_log_interval: int = _opt(40, "log the running batch's stats every N decode steps")
    num_continuous_decode_steps: int = _opt(
        1, "decode steps launched back to back per scheduler step when no sampling needs host tokens (fewer host "
           "round trips per token; outputs arrive in chunks of this many)")
    debug_invariants: bool = _opt(False, "assert KV-pool accounting after every scheduler step (tests turn it on)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
        # NOTE: frozen, so the canonical spelling is written through object.__setattr__, once, here.
        object.__setattr__(self, "dtype", DTYPE_SPELLINGS.get(self.dtype, self.dtype))
        self._check(0.0 < self.mem_fraction_static < 1.0, "mem_fraction_static", "must be in (0, 1)")
        self._check(self.page_size >= 1, "page_size", "must be >= 1")
        self._check(self.max_total_tokens is None or self.max_total_tokens > 0, "max_total_tokens", "must be > 0")
        self._check(
            self.max_running_requests is None or self.max_running_requests > 0, "max_running_requests", "must be > 0"
        )
        self._check(
            self.chunked_prefill_size == -1 or self.chunked_prefill_size > 0,
            "chunked_prefill_size",
            "must be > 0 or -1",
        )
        self._check(self.max_prefill_tokens > 0, "max_prefill_tokens", "must be > 0")
        self._check(self.context_length is None or self.context_length > 0, "context_length", "must be > 0")
        self._check(1 <= self.port <= 65535 or self.port == 0, "port", "must be in [0, 65535]")
        self._check(self.max_n >= 1, "max_n", "must be >= 1")
        self._check(self.stream_interval >= 1, "stream_interval", "must be >= 1")
        self._check(self.decode_log_interval >= 1, "decode_log_interval", "must be >= 1")
        self._check(self.num_continuous_decode_steps >= 1, "num_continuous_decode_steps", "must be >= 1")
        self._check(self.grammar_compile_timeout > 0, "grammar_compile_timeout", "must be > 0")
        self._check(self.watchdog_timeout > 0, "watchdog_timeout", "must be > 0")
        self._check(self.max_queued_requests is None or self.max_queued_requests >= 1, "max_queued_requests",
                    "must be >= 1")
        for name in ("lora_paths", "lora_target_modules"):  # NOTE: a list from the CLI, stored as a tuple
            value = getattr(self, name)
            if isinstance(value, str):
                value = value.split()
            object.__setattr__(self, name, tuple(value) if value is not None else None)
        check_parallel_args(self)
        self._check(self.max_loras_per_batch >= 1, "max_loras_per_batch", "must be >= 1")
        self._check(self.max_loaded_loras is None or self.max_loaded_loras >= 1, "max_loaded_loras", "must be >= 1")
        self._check(self.max_lora_rank is None or self.max_lora_rank >= 1, "max_lora_rank", "must be >= 1")
        self._check(
            all(isinstance(k, str) and dataclasses.is_dataclass(v) and not isinstance(v, type)
                for k, v in self.plugin_args.items()),
            "plugin_args", "must map plugin names to instances of their options dataclass",
        )

    @staticmethod
    def _check(ok: bool, name: str, why: str) -> None:
        if not ok:
            raise ValueError(f"{name} {why}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ServerArgs:
        """Fields by name or by SGLang's other spelling (``device`` for ``backend``); SGLang's flags that are not
        fields are accepted where sgl already behaves so and refused with one line otherwise."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for f in fields.values():
            for alias in f.metadata.get("aliases", ()):
                key = alias.removeprefix("--").replace("-", "_")
                if key not in kwargs:
                    continue
                value = kwargs.pop(key)
                if kwargs.get(f.name) not in (None, value):
                    raise ValueError(f"give one of {f.name} and {key}, not both")
                kwargs[f.name] = value
        check_sglang_flags({k: kwargs.pop(k) for k in list(kwargs) if k in SGLANG_FLAGS and k not in fields})
        unknown = sorted(set(kwargs) - set(fields))
        if unknown:
            raise ValueError(f"unknown server argument(s): {', '.join(unknown)}")
        return cls(**kwargs)

    def replace(self, **changes: Any) -> ServerArgs:
        return dataclasses.replace(self, **changes)

    @property
    def lora_enabled(self) -> bool:
        """--enable-lora, or any LoRA flag given (so none is accepted and ignored)."""
        return self.enable_lora or bool(self.lora_paths) or any(
            v is not None for v in (self.lora_backend, self.lora_target_modules, self.max_lora_rank,
                                    self.max_loaded_loras)
        )

    @property
    def enable_chunked_prefill(self) -> bool:
        return self.chunked_prefill_size > 0

    @property
    def origins(self) -> list[str]:
        return [o.strip() for o in (self.allowed_origins or "").split(",") if o.strip()]
