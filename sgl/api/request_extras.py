"""SGLang's request fields that sgl knows but does not implement, and the values at which they ask for nothing.

SGLang's clients send many of these with their neutral value on every request (its router re-serializes a request
with ``return_hidden_states: false``, ``separate_reasoning: true``, ...; bench_serving sends ``lora_id: null``).
A neutral value is accepted, since it asks for nothing; any other value is refused with a 400 that names the field
and says why, never accepted and ignored. Unknown fields stay refused as "unrecognized request argument".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from pydantic_core import PydanticCustomError

UNSUPPORTED_FIELD = "unsupported_field"  # the pydantic error type errors.py turns into a 400 naming the field


class Unsupported(NamedTuple):
    neutral: tuple[Any, ...]  # values (besides null) that ask for nothing
    why: str


def _all(names: tuple[str, ...], neutral: tuple[Any, ...], why: str) -> dict[str, Unsupported]:
    return {name: Unsupported(neutral, why) for name in names}


_PD = "prefill/decode disaggregation is not supported"
_MULTIMODAL = "sgl serves text models only"

# Fields of both OpenAI routes and of /generate (SGLang's GenerateReqInput and its OpenAI protocol).
COMMON: dict[str, Unsupported] = {
    "lora_id": Unsupported(("",), "lora_id is not supported: name the adapter with lora_path"),
    **_all(("session_id", "session_params"), (), "sessions (continual prompting) are not supported"),
    "custom_logit_processor": Unsupported((), "custom logit processors are not supported"),
    "return_hidden_states": Unsupported((False,), "hidden states are not returned"),
    "return_routed_experts": Unsupported((False,), "sgl serves no mixture-of-experts routing data"),
    "routed_experts_start_len": Unsupported((0,), "sgl serves no mixture-of-experts routing data"),
    **_all(("bootstrap_host", "bootstrap_port", "bootstrap_room", "bootstrap_pair_key"), (), _PD),
    # NOTE: one replica has exactly data-parallel rank 0, so 0 asks for what sgl does anyway
    **_all(("data_parallel_rank", "routed_dp_rank", "disagg_prefill_dp_rank"), (0,),
           "data-parallel ranks other than 0 do not exist (sgl runs one replica)"),
    "priority": Unsupported((), "request priorities are not supported"),
    **_all(("extra_key", "cache_salt"), (), "prefix-cache namespaces are not supported"),
    "custom_labels": Unsupported((), "custom metric labels are not supported"),
    **_all(("image_data", "video_data", "audio_data", "input_embeds", "images_config"), (), _MULTIMODAL),
    "modalities": Unsupported((["text"],), _MULTIMODAL),
    **_all(("max_dynamic_patch", "min_dynamic_patch"), (), _MULTIMODAL),
    "use_audio_in_video": Unsupported((False,), _MULTIMODAL),
    "token_ids_logprob": Unsupported((), "logprobs of chosen token ids are not supported"),
    **_all(("return_token_ids", "return_prompt_token_ids", "return_cached_tokens_details", "return_meta_info",
            "return_bytes", "return_entropy"), (False,), "this extra output is not supported"),
    "background": Unsupported((False,), "background requests are not supported"),
    "conversation_id": Unsupported((), "conversations are not stored"),
    "ngram_corpus_id": Unsupported((), "n-gram speculative decoding is not supported"),
    "stop_regex": Unsupported(([],), "stop_regex is not supported; use stop strings"),
    "log_metrics": Unsupported((True,), "every request is counted in /metrics"),
    # NOTE: sgl never logs prompt or output text, so a request that asks not to be logged always is not
    "no_logs": Unsupported((False, True), ""),
}

# Fields only chat completions has (OpenAI's and SGLang's).
CHAT: dict[str, Unsupported] = {
    **_all(("functions", "function_call"), (), "the deprecated functions API is not supported: use tools"),
    "continue_final_message": Unsupported((False,), "continuing the final assistant message is not supported"),
    **_all(("reasoning_effort", "reasoning", "task"), (), "sgl has no reasoning controls"),
    **_all(("audio", "prediction", "web_search_options"), (), "this OpenAI feature is not supported"),
    "store": Unsupported((False,), "completions are not stored"),
    "metadata": Unsupported((), "completions are not stored, so they take no metadata"),
    "service_tier": Unsupported(("auto", "default"), "there is one service tier"),
    **_all(("prompt_cache_key", "safety_identifier", "verbosity"), (), "this OpenAI hint is not supported"),
}


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    return value is None or any(type(value) is type(n) and value == n for n in neutral)


def drop_neutral(data: Any, table: Mapping[str, Unsupported]) -> Any:
    """A ``model_validator(mode="before")`` body: removes known fields at a neutral value, refuses the others."""
    if not isinstance(data, Mapping):
        return data
    known = [k for k in data if k in table]
    if not known:
        return data
    for name in known:
        entry = table[name]
        if not _is_neutral(data[name], entry.neutral):
            raise PydanticCustomError(UNSUPPORTED_FIELD, "{field} is not supported: {why}",
                                      {"field": name, "why": entry.why})
    return {k: v for k, v in data.items() if k not in table}
