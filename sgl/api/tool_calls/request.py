"""A chat request's tools: checked, given to the chat template, enforced by the grammar, read back from the text."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sgl.api.errors import ApiError
from sgl.api.tool_calls.base import MAX_FORCED_CALLS, CallDraft, Function, Scan, ToolCallParser
from sgl.api.tool_calls.protocol import NamedToolChoice, Tool, ToolChoice
from sgl.core.sampling.params import CONSTRAINT_FIELDS


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolPlan:
    """What the request's tools ask of the route: the parser to read calls with, and how many calls to keep."""

    parser: ToolCallParser
    parallel: bool

    def scan(self, text: str, final: bool) -> Scan:
        found = self.parser.scan(text, final)
        return found if self.parallel else Scan(found.content, found.calls[:1])

    def message(self, text: str) -> tuple[dict[str, Any], bool]:
        """The assistant message for the whole output, and whether it holds tool calls."""
        found = self.scan(text, final=True)
        if not found.calls:
            return {"role": "assistant", "content": text, "refusal": None}, False
        return {"role": "assistant", "content": found.content or None, "refusal": None,
                "tool_calls": [tool_call(c) for c in found.calls]}, True


def tool_call(call: CallDraft, call_id: str | None = None) -> dict[str, Any]:
    return {"id": call_id or new_call_id(), "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def _functions(tools: list[Tool]) -> list[Function]:
    out = []
    for t in tools:
        params = t.function.parameters
        out.append(Function(t.function.name, params if params is not None else {"type": "object", "properties": {}}))
    return out


def plan_tools(
    parser: ToolCallParser | None, tools: list[Tool] | None, choice: ToolChoice | None, parallel: bool | None,
    sampling: dict[str, Any],
) -> tuple[ToolPlan | None, list[dict[str, Any]] | None]:
    """The plan (None: no tool calling) and the tools for the chat template; puts the grammar of a forced call into
    ``sampling``. ApiError (400) names the field of any mistake."""
    if choice is not None and not tools:
        if choice == "none":
            return None, None
        raise ApiError(400, "tool_choice is given but tools is not", param="tool_choice")
    if not tools or choice == "none":
        return None, None
    names = [t.function.name for t in tools]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ApiError(400, f"tools: the function name {dup!r} is given twice", param="tools")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise ApiError(400, f"tool_choice names the function {choice.function.name!r}, which is not in tools "
                       f"({', '.join(names)})", param="tool_choice.function.name")
    if parser is None:
        raise ApiError(400, "tools need a server started with --tool-call-parser (it says how the model writes calls)",
                       param="tools")
    functions = _functions(tools)
    if isinstance(choice, NamedToolChoice):
        forced = [f for f in functions if f.name == choice.function.name]
        max_calls = 1
    elif choice == "required":
        forced, max_calls = functions, (MAX_FORCED_CALLS if parallel is not False else 1)
    else:
        forced, max_calls = [], 0
    if forced:
        given = [k for k in CONSTRAINT_FIELDS if sampling.get(k) is not None]
        if given:
            raise ApiError(400, f"tool_choice {'required' if choice == 'required' else 'naming a function'} "
                           f"constrains the output; give it or {given[0]} (or response_format), not both",
                           param="tool_choice")
        try:
            structure = parser.structure(forced, max_calls)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="tool_choice") from exc
        sampling["structural_tag"] = json.dumps({"type": "structural_tag", "format": structure})
    if parser.needs_special_tokens and sampling.get("skip_special_tokens") is None:
        sampling["skip_special_tokens"] = False
    plan = ToolPlan(parser, parallel is not False)
    return plan, [t.model_dump(exclude_none=True) for t in tools]


def template_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    """An assistant message's tool_calls with their arguments as objects, as chat templates read them."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    if not isinstance(calls, list):
        raise ApiError(400, "tool_calls must be a list", param=f"messages.{index}.tool_calls")
    out = []
    for j, call in enumerate(calls):
        where = f"messages.{index}.tool_calls.{j}"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ApiError(400, "a tool call needs function.name", param=f"{where}.function.name")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise ApiError(400, f"function.arguments is not valid JSON: {exc}",
                               param=f"{where}.function.arguments") from exc
        out.append({**call, "function": {**fn, "arguments": args}})
    return {**message, "tool_calls": out}
