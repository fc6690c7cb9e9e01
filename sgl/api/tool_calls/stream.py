"""Streaming tool calls as OpenAI does: each call's first delta has its index, id, type and name (arguments ""),
later deltas carry argument fragments; plain content streams as content."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sgl.api.tool_calls.request import ToolPlan, new_call_id


@dataclass
class ToolStream:
    """What one choice has streamed: content characters, and per call its id and argument characters."""

    plan: ToolPlan
    content: int = 0
    ids: list[str] = field(default_factory=list)
    sent_args: list[int] = field(default_factory=list)

    @property
    def called(self) -> bool:
        return bool(self.ids)

    def deltas(self, text: str, final: bool) -> list[dict[str, Any]]:
        """The deltas that bring the client from what it has to what ``text`` shows."""
        found = self.plan.scan(text, final)
        out: list[dict[str, Any]] = []
        if len(found.content) > self.content:
            out.append({"content": found.content[self.content:]})
            self.content = len(found.content)
        for i, call in enumerate(found.calls):
            if call.name is None:
                break
            if i == len(self.ids):
                self.ids.append(new_call_id())
                self.sent_args.append(0)
                out.append({"tool_calls": [{"index": i, "id": self.ids[i], "type": "function",
                                            "function": {"name": call.name, "arguments": ""}}]})
            if len(call.arguments) > self.sent_args[i]:
                out.append({"tool_calls": [{"index": i, "function": {
                    "arguments": call.arguments[self.sent_args[i]:]}}]})
                self.sent_args[i] = len(call.arguments)
        return out
