"""SGLang launch flags that are not ServerArgs fields, so that a launch script copied from SGLang runs or stops with
one line that says why.

Each flag here is parsed (by ``sgl serve`` and by ``sgl.Engine(**kwargs)``) but is deliberately not a ServerArgs
field, so nothing downstream can mistake it for a setting that works. Either sgl already behaves the way the flag
asks (``--enable-metrics``: /metrics is always served), and every value is accepted; or only the value that matches
what sgl does is accepted (``--tp-size 1``) and any other is refused at startup, naming the issue that brings the
feature where one is filed. When a feature lands, its flags move from this table into ServerArgs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


class SGLangFlag(NamedTuple):
    name: str  # SGLang's ServerArgs field; the flag is --name-with-dashes
    type: type  # how the command line parses its value (str for SGLang's list-valued flags)
    default: Any  # the value that matches what sgl does; giving it changes nothing
    why: str  # accepted: what sgl does already; refused: what is not supported
    issue: int | None = None  # the issue that brings the feature, where one is filed
    aliases: tuple[str, ...] = ()  # SGLang's other spellings (--tp for --tp-size)
    accepted: bool = False  # True: sgl already does what the flag asks, whatever its value

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def help(self) -> str:
        if self.accepted:
            return f"accepted: {self.why}"
        issue = f" (issue {self.issue})" if self.issue else ""
        return f"{self.why}{issue}"

    def refusal(self, value: Any) -> str | None:
        """The one line that refuses ``value``; None when the value is accepted."""
        if self.accepted or value == self.default:
            return None
        shown = self.flag if value is True else f"{self.flag} {value}"
        issue = f" (issue {self.issue})" if self.issue else ""
        return f"{shown}: {self.why}{issue}"


def _no(name: str, type_: type, default: Any, why: str, issue: int | None = None, *aliases: str) -> SGLangFlag:
    return SGLangFlag(name, type_, default, why, issue, aliases)


def _yes(name: str, type_: type, default: Any, why: str) -> SGLangFlag:
    return SGLangFlag(name, type_, default, why, accepted=True)


_QUANT = 14
_LORA = 15
_OPENAI = 19
_SPEC = 22

_FLAGS = [
    # sgl already does what these ask --------------------------------------------------------------------------
    _yes("enable_metrics", bool, False, "sgl always serves Prometheus metrics at /metrics"),
    _yes("enable_cache_report", bool, False, "usage.prompt_tokens_details.cached_tokens is always reported"),
    _yes("trust_remote_code", bool, False,
         "sgl never runs code from a model repository; it reads config.json and tokenizer.json itself and runs "
         "only registered architectures"),
    _yes("skip_server_warmup", bool, False, "sgl sends no warm-up request"),
    _yes("disable_custom_all_reduce", bool, False, "sgl has no custom all-reduce"),
    # parallelism ----------------------------------------------------------------------------------------------
    _no("pp_size", int, 1, "pipeline parallelism is not supported yet", None, "--pp", "--pipeline-parallel-size"),
    _no("enable_dp_attention", bool, False, "data-parallel attention is not supported yet"),
    _no("enable_two_batch_overlap", bool, False, "two-batch overlap is not supported yet"),
    # quantization, LoRA, speculative decoding ------------------------------------------------------------------
    _no("quantization_param_path", str, None, "KV cache scaling factors are not supported yet"),
    _no("lora_eviction_policy", str, "lru", "LoRA eviction policies other than LRU are not supported yet", _LORA),
    _no("speculative_ngram_min_bfs_breadth", int, 1, "tree drafts are not supported yet (NGRAM drafts a chain)", _SPEC),
    _no("speculative_ngram_max_bfs_breadth", int, 1, "tree drafts are not supported yet (NGRAM drafts a chain)", _SPEC),
    _no("speculative_ngram_match_type", str, None, "NGRAM match types are not supported yet (it drafts the newest "
        "match's continuation)", _SPEC),
    _no("speculative_token_map", str, None, "EAGLE token maps are not supported yet", _SPEC),
    _no("speculative_accept_threshold_single", float, 1.0, "relaxed acceptance is not supported yet (exact only)", _SPEC),
    _no("speculative_accept_threshold_acc", float, 1.0, "relaxed acceptance is not supported yet (exact only)", _SPEC),
    _no("speculative_attention_mode", str, None, "choosing the verify attention mode is not supported yet", _SPEC),
    # the OpenAI surface ---------------------------------------------------------------------------------------
    _no("enable_multimodal", bool, False, "multimodal input is not supported yet"),
    _no("completion_template", str, None, "completion templates are not supported yet"),
    _no("sampling_defaults", str, "openai",
        "sampling defaults from generation_config.json are not supported yet (sgl uses OpenAI's defaults)"),
    _no("preferred_sampling_params", str, None, "preferred sampling parameters are not supported yet"),
    _no("admin_api_key", str, None, "a separate admin API key is not supported yet"),
    _no("constrained_json_whitespace_pattern", str, None, "a JSON whitespace pattern is not supported yet"),
    _no("enable_custom_logit_processor", bool, False, "custom logit processors are not supported yet"),
    _no("enable_return_hidden_states", bool, False, "returning hidden states is not supported yet"),
    _no("allow_auto_truncate", bool, False, "truncating over-long prompts is not supported yet (they are refused)"),
    # model loading and tokenizer ------------------------------------------------------------------------------
    _no("tokenizer_mode", str, "auto", "slow tokenizers are not supported: sgl reads tokenizer.json only"),
    _no("skip_tokenizer_init", bool, False, "serving without a tokenizer is not supported yet"),
    _no("tokenizer_worker_num", int, 1, "several tokenizer workers are not supported yet"),
    _no("json_model_override_args", str, "{}", "overriding the model config is not supported yet"),
    _no("model_loader_extra_config", str, "{}", "extra model-loader options are not supported yet"),
    _no("config", str, None, "config files are not supported yet: pass the flags on the command line"),
    # kernels, graphs, memory, scheduling ----------------------------------------------------------------------
    _no("enable_torch_compile", bool, False, "torch.compile is not supported yet"),
    _no("torch_compile_max_bs", int, 32, "torch.compile is not supported yet"),
    _no("cuda_graph_bs", str, None, "a list of graph batch sizes is not supported yet (use --cuda-graph-max-bs)"),
    _no("prefill_attention_backend", str, None, "a separate prefill attention backend is not supported yet"),
    _no("decode_attention_backend", str, None, "a separate decode attention backend is not supported yet"),
    _no("sampling_backend", str, None, "choosing the sampler is not supported yet (the platform chooses)"),
    _no("enable_deterministic_inference", bool, False, "batch-invariant kernels are not supported yet"),
    _no("cpu_offload_gb", int, 0, "offloading weights to the host is not supported yet"),
    _no("enable_hierarchical_cache", bool, False, "a host-memory KV cache tier is not supported yet"),
    _no("disaggregation_mode", str, "null", "prefill/decode disaggregation is not supported yet"),
    _no("radix_eviction_policy", str, "lru", "eviction policies other than LRU are not supported yet"),
    _no("enable_priority_scheduling", bool, False, "priority scheduling is not supported yet"),
    # logging --------------------------------------------------------------------------------------------------
    _no("show_time_cost", bool, False, "timing marks are not supported yet"),
    _no("log_level_http", str, None, "a separate HTTP log level is not supported yet"),
    _no("crash_dump_folder", str, None, "crash dumps are not supported yet"),
    _no("enable_trace", bool, False, "OpenTelemetry tracing is not supported yet"),
]

SGLANG_FLAGS: Mapping[str, SGLangFlag] = {f.name: f for f in _FLAGS}


def check_sglang_flags(values: Mapping[str, Any]) -> None:
    """Raises ValueError with one line for the first value that sgl refuses; accepted values pass silently."""
    for name, value in values.items():
        line = SGLANG_FLAGS[name].refusal(value)
        if line is not None:
            raise ValueError(line)
