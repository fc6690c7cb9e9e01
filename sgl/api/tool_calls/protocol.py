"""The request fields of tool calling, as OpenAI defines them; a malformed tool is a 400 naming its field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SCHEMA_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def check_parameters_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The arguments' JSON schema: an object schema whose properties are schemas and whose required names are strings.

    NOTE: a shallow check, for the mistakes clients make; a deeper one is the grammar compiler's (also a 400).
    """
    kind = schema.get("type", "object")
    if kind != "object":
        raise ValueError(f"must be a JSON schema of type 'object' (the arguments are an object), got type {kind!r}")
    props = schema.get("properties", {})
    if not isinstance(props, dict) or not all(isinstance(v, (dict, bool)) for v in props.values()):
        raise ValueError("properties must map each argument name to a JSON schema object")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError("required must be a list of argument names")
    for name, sub in props.items():
        t = sub.get("type") if isinstance(sub, dict) else None
        types = t if isinstance(t, list) else [t] if t is not None else []
        bad = [x for x in types if x not in _SCHEMA_TYPES]
        if bad:
            raise ValueError(f"properties.{name}.type {bad[0]!r} is not a JSON schema type")
    return schema


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else check_parameters_schema(value)


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
