"""Request bodies of the OpenAI-compatible routes (responses are built as plain dicts in OpenAI's exact shapes).

NOTE: unknown fields are refused (400 "unrecognized request argument"), as OpenAI does, so a misspelt option never
silently does nothing. SGLang's extras are accepted at the top level, as the openai client's ``extra_body`` sends
them: those sgl implements map onto SamplingParams; those it does not are refused unless neutral
(request_extras.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sgl.api.openapi_doc import MAX_N, MAX_TOKENS, TokenId
from sgl.api.request_extras import CHAT, COMMON, drop_neutral
from sgl.api.tool_calls.protocol import Tool, ToolChoice

CHAT_ROLES = ("system", "user", "assistant", "tool")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = None


class _SamplingFields(_Strict):
    """Fields shared by both generation routes; None means "not given" (clients send nulls)."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0, json_schema_extra={MAX_TOKENS: True})
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, json_schema_extra={MAX_N: True})
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    # SGLang's extras (its names)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = Field(default=None, ge=0)
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    no_stop_trim: bool | None = None
    regex: str | None = None
    ebnf: str | None = None
    json_schema: str | dict[str, Any] | None = None  # NOTE: SGLang takes the schema's JSON text; an object works too
    sampling_seed: int | None = None  # SGLang router's name for seed
    custom_params: dict[str, Any] | None = None
    rid: str | None = None
    lora_path: str | None = None  # SGLang's: the adapter by name (else ``model`` names it)

    @model_validator(mode="before")
    @classmethod
    def _known_extras(cls, data: Any) -> Any:
        return drop_neutral(data, COMMON)

    def sampling_dict(self) -> dict[str, Any]:
        """SGLang's native sampling params (max_new_tokens aside); unset fields keep SamplingParams' defaults."""
        fields = {
            "temperature": self.temperature, "top_p": self.top_p, "n": self.n, "stop": self.stop, "seed": self.seed,
            "sampling_seed": self.sampling_seed, "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty, "logit_bias": self.logit_bias, "top_k": self.top_k,
            "min_p": self.min_p, "repetition_penalty": self.repetition_penalty, "min_new_tokens": self.min_tokens,
            "stop_token_ids": self.stop_token_ids, "ignore_eos": self.ignore_eos,
            "skip_special_tokens": self.skip_special_tokens, "no_stop_trim": self.no_stop_trim, "regex": self.regex,
            "ebnf": self.ebnf, "json_schema": self.json_schema, "custom_params": self.custom_params,
        }
        return {k: v for k, v in fields.items() if v is not None}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options is not None and self.stream_options.include_usage)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """A message as the chat template sees it; extra keys (tool_call_id, ...) are passed to the template."""

    model_config = ConfigDict(extra="allow")

    # NOTE: the document lists the roles chat templates commonly know; a template may accept more (validation
    # leaves that to it)
    role: str = Field(json_schema_extra={"enum": list(CHAT_ROLES)})
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0, json_schema_extra={MAX_TOKENS: True})
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    chat_template_kwargs: dict[str, Any] | None = None
    # SGLang: the prompt's token ids, used instead of rendering the messages
    input_ids: list[TokenId] | None = Field(default=None, json_schema_extra={"minItems": 1})
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # SGLang's: split reasoning_content off (with --reasoning-parser; default true), stream it as it grows (true)
    separate_reasoning: bool | None = None
    stream_reasoning: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _chat_extras(cls, data: Any) -> Any:
        return drop_neutral(data, CHAT)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def max_tokens_name(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"


Prompt = str | list[str] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(_SamplingFields):
    prompt: Prompt = Field(json_schema_extra={"minLength": 1, "minItems": 1})
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sgl"
    root: str | None = None
    parent: str | None = None  # a LoRA adapter's base model
    max_model_len: int | None = None
