"""The request edge's values: what a generate call asks (GenerateInput), what bounds it (ModelLimits), and what
validation makes of it (PreparedRequest), with the one function that turns the first into the last.

NOTE: this is the only place a request is validated. sgl.Engine and every HTTP route build a GenerateInput and
call ``prepare_request``; the scheduler trusts what comes out.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sgl.core.config import DEFAULT_GRAMMAR_BACKEND
from sgl.core.grammar.manager import check_grammar_request
from sgl.core.ipc import GenerateReq
from sgl.core.sampling.params import SamplingParams

if TYPE_CHECKING:
    from sgl.core.config import ServerArgs
    from sgl.core.tokenizer.tokenizer import Tokenizer

MAX_TOP_LOGPROBS = 20
NATIVE_DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default when a request gives no max_new_tokens
POOLING_METHODS = ("last", "mean")
REST_OF_CONTEXT = None  # as a default: every token the context has left after the prompt

# SGLang's native sampling params that sgl does not implement: null or empty (what SGLang's clients send when unset;
# its frontend sends stop_regex: []) is accepted, any other value is refused with the reason.
UNSUPPORTED_SAMPLING = {
    "stop_regex": "stop_regex is not supported; use stop strings",
    "custom_params": "custom_params needs a custom logit processor, which sgl does not support",
}


class RequestError(ValueError):
    """A client mistake (HTTP 400); ``param`` names the request field it is about, where there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ModelLimits:
    context_len: int
    vocab_size: int
    max_n: int = 64
    grammar_backend: str = DEFAULT_GRAMMAR_BACKEND  # ServerArgs.grammar_backend, checked at the edge
    max_total_tokens: int | None = None  # KV pool size: a prompt that cannot fit in it could never be scheduled
    max_new_tokens_limit: int | None = None  # --max-new-tokens-limit
    lora_enabled: bool = False  # a request may name a LoRA adapter (which one is loaded, the scheduler checks)

    @classmethod
    def of(cls, args: ServerArgs, context_len: int, vocab_size: int, max_total_tokens: int | None) -> ModelLimits:
        """The limits the engine and the server both apply: the model's, and the server arguments capping a request."""
        return cls(context_len, vocab_size, args.max_n, args.grammar_backend, max_total_tokens,
                   args.max_new_tokens_limit, args.lora_enabled)

    @property
    def prompt_limit(self) -> int:
        """The shortest prompt that is refused: it must leave the context room and fit in the KV pool."""
        pool = self.max_total_tokens if self.max_total_tokens is not None else self.context_len
        return min(self.context_len, pool)


@dataclass
class GenerateInput:
    """One generate call: a text or token-id prompt and its options (SGLang's GenerateReqInput, one prompt).

    ``default_max_new_tokens`` applies when ``sampling_params`` gives no max_new_tokens (REST_OF_CONTEXT: all the
    context has left); a default never exceeds what the context has left, nor --max-new-tokens-limit.
    ``max_tokens_name`` is the caller's name for max_new_tokens, used in errors ("max_tokens" on the OpenAI routes).
    """

    text: str | None = None
    input_ids: list[int] | None = None
    sampling_params: SamplingParams | Mapping[str, Any] | None = None
    rid: str | None = None
    return_logprob: bool = False
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    add_special_tokens: bool = True  # False for text that already holds them (a rendered chat template)
    lora_path: str | None = None  # a loaded LoRA adapter's name (None: the base model)
    pooling: str | None = None  # "last" | "mean": embed the prompt instead of generating (max_new_tokens 0)
    default_max_new_tokens: int | None = NATIVE_DEFAULT_MAX_NEW_TOKENS
    max_tokens_name: str = "max_new_tokens"


@dataclass(frozen=True)
class PreparedRequest:
    """A validated, tokenized input: one GenerateReq per choice (n > 1 gives siblings sharing a group)."""

    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    reqs: tuple[GenerateReq, ...]
    return_logprob: bool
    return_text_in_logprobs: bool
    stream: bool

    @property
    def n(self) -> int:
        return len(self.reqs)


def sampling_params_of(given: SamplingParams | Mapping[str, Any] | None) -> tuple[SamplingParams, bool]:
    """A private copy of the request's params, and whether it set max_new_tokens itself."""
    if isinstance(given, SamplingParams):
        return dataclasses.replace(given), True
    if given is not None and not isinstance(given, Mapping):
        raise RequestError(f"sampling_params must be an object, got {type(given).__name__}", "sampling_params")
    fields = dict(given or {})
    for name, why in UNSUPPORTED_SAMPLING.items():
        if fields.get(name) not in (None, "", [], (), {}):
            raise RequestError(why, name)
        fields.pop(name, None)
    return SamplingParams.from_dict(fields), fields.get("max_new_tokens") is not None


def _check_ids(ids: list[int], limits: ModelLimits) -> list[int]:
    if not ids:
        raise RequestError("input_ids is empty", "input_ids")
    _check_prompt_length(len(ids), limits)  # NOTE: before the scan below, which is slow for a huge list
    bad = next((t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < limits.vocab_size),
               None)
    if bad is not None:
        raise RequestError(f"input_ids holds {bad!r}, outside the vocabulary [0, {limits.vocab_size})", "input_ids")
    return ids


def _check_prompt_length(tokens: int, limits: ModelLimits, lower_bound: str = "") -> None:
    """``lower_bound`` says why ``tokens`` is only a lower bound (the prompt was not tokenized)."""
    count = f"at least {tokens} tokens ({lower_bound})" if lower_bound else f"{tokens} tokens"
    if tokens >= limits.context_len:
        raise RequestError(f"the prompt has {count}, but the model's context length is {limits.context_len}")
    if limits.max_total_tokens is not None and tokens >= limits.max_total_tokens:
        raise RequestError(f"the prompt has {count}, but the KV pool holds only {limits.max_total_tokens} "
                           "(--max-total-tokens)")


def encode_prompt(tokenizer: Tokenizer, text: object, add_special_tokens: bool, limits: ModelLimits) -> list[int]:
    """Tokenizes a text prompt, refusing one whose byte length alone proves it too long before tokenizing it.

    NOTE: no token stands for more than ``tokenizer.max_token_bytes`` bytes of input, so a prompt of B bytes has at
    least ceil(B / that) tokens; a 10 MB prompt is refused in microseconds instead of after seconds of tokenizing.
    """
    if not isinstance(text, str):
        raise RequestError(f"text must be a string, got {type(text).__name__}", "text")
    if not text:
        raise RequestError("the prompt is empty: give text or input_ids", "text")
    bound = tokenizer.max_token_bytes
    if bound:
        size = len(text.encode("utf-8", "surrogatepass"))
        least = -(-size // bound)
        if least >= limits.prompt_limit:
            _check_prompt_length(least, limits, f"{size} bytes, and no token stands for more than {bound}")
    try:
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)
    except UnicodeError as exc:  # a lone surrogate (valid JSON, not valid text)
        raise RequestError(f"the prompt is not valid Unicode text: {exc}", "text") from exc


def _resolve_max_new_tokens(params: SamplingParams, given: bool, obj: GenerateInput, prompt_len: int,
                            limits: ModelLimits) -> None:
    cap, ctx, name = limits.max_new_tokens_limit, limits.context_len, obj.max_tokens_name
    remaining = max(ctx - prompt_len, 0)
    if given:
        if cap is not None and params.max_new_tokens > cap:
            raise RequestError(f"{name} is {params.max_new_tokens}; at most {cap} is allowed (--max-new-tokens-limit)",
                               name)
        if prompt_len + params.max_new_tokens > ctx:
            raise RequestError(f"the prompt ({prompt_len} tokens) plus {name} ({params.max_new_tokens}) exceeds the "
                               f"context length {ctx}", name)
        return
    default = obj.default_max_new_tokens
    value = remaining if default is REST_OF_CONTEXT else min(default, remaining)
    params.max_new_tokens = min(value, cap) if cap is not None else value
    if params.min_new_tokens > params.max_new_tokens:
        raise RequestError(f"min_new_tokens ({params.min_new_tokens}) exceeds the {params.max_new_tokens} tokens the "
                           f"context has left for this prompt", "min_new_tokens")


def prepare_request(obj: GenerateInput, tokenizer: Tokenizer, limits: ModelLimits,
                    rid_in_use: Callable[[str, int], bool] = lambda rid, n: False) -> PreparedRequest:
    """Validates and tokenizes ``obj``; every client mistake raises RequestError (a ValueError)."""
    params, given = sampling_params_of(obj.sampling_params)
    if not given:
        params.max_new_tokens = limits.context_len  # NOTE: provisional, so validate() checks the rest now
    params.validate(limits.vocab_size)
    if params.n > limits.max_n:
        raise RequestError(f"n is {params.n}; at most {limits.max_n} is allowed (--max-n)", "n")
    check_grammar_request(params, limits.grammar_backend)  # grammar: disabled / not installed / bad spec
    top = obj.top_logprobs_num or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise RequestError(f"top_logprobs_num must be in [0, {MAX_TOP_LOGPROBS}], got {top}", "top_logprobs_num")
    rid = obj.rid or uuid.uuid4().hex
    if rid_in_use(rid, params.n):
        raise RequestError(f"request id {rid!r} is already in use", "rid")
    if obj.input_ids is not None:
        if obj.text is not None:
            raise RequestError("give exactly one of text and input_ids", "text")
        ids = _check_ids(list(obj.input_ids), limits)
    else:
        ids = encode_prompt(tokenizer, obj.text, obj.add_special_tokens, limits)
        _check_prompt_length(len(ids), limits)
    _resolve_max_new_tokens(params, given, obj, len(ids), limits)
    start = -1
    if obj.return_logprob and obj.logprob_start_len is not None and obj.logprob_start_len >= 0:
        if obj.logprob_start_len >= len(ids):
            raise RequestError(f"logprob_start_len {obj.logprob_start_len} must be < the prompt length {len(ids)}",
                               "logprob_start_len")
        start = obj.logprob_start_len
    rids = [rid] if params.n == 1 else [f"{rid}-{i}" for i in range(params.n)]
    group = rid if params.n > 1 else None
    if obj.lora_path is not None:
        if not limits.lora_enabled:
            raise RequestError(f"lora_path {obj.lora_path!r}: LoRA is not enabled on this server (start it with "
                               "--enable-lora or --lora-paths)", "lora_path")
        if not isinstance(obj.lora_path, str) or not obj.lora_path:
            raise RequestError(f"lora_path must be an adapter name, got {obj.lora_path!r}", "lora_path")
    if obj.pooling is not None:
        if obj.pooling not in POOLING_METHODS:
            raise RequestError(f"pooling must be one of {', '.join(POOLING_METHODS)}, got {obj.pooling!r}", "pooling")
        if params.max_new_tokens != 0 or params.n != 1:
            raise RequestError("an embedding request generates nothing: max_new_tokens must be 0 and n 1", "pooling")
    reqs = tuple(GenerateReq(r, ids, params, obj.return_logprob, start, top, obj.stream, group, obj.lora_path,
                             obj.pooling) for r in rids)
    return PreparedRequest(rid, ids, params, reqs, obj.return_logprob, obj.return_text_in_logprobs, obj.stream)
