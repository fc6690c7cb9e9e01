"""The server's lifecycle state, shared by the gate middleware, the routes and the signal handling."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from sgl.api.auth import send_error
from sgl.api.errors import error_bytes
from sgl.core.config import ServerArgs

if TYPE_CHECKING:
    from sgl.api.tokenizer_manager import TokenizerManager
    from sgl.api.reasoning import ReasoningParser
    from sgl.api.tool_calls.base import ToolCallParser

Phase = Literal["starting", "ready", "draining", "stopped"]


@dataclass
class ServerState:
    args: ServerArgs
    model_path: str
    phase: Phase = "starting"
    manager: TokenizerManager | None = None
    exit_code: int = 0
    started_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def served_model_name(self) -> str:
        return self.args.served_model_name or self.model_path

    @cached_property
    def tool_parser(self) -> ToolCallParser | None:
        """The --tool-call-parser's parser; ValueError (one line) for an unknown name."""
        from sgl.api.tool_calls.base import load_tool_parser

        return load_tool_parser(self.args.tool_call_parser)

    @cached_property
    def reasoning_parser(self) -> ReasoningParser | None:
        """The --reasoning-parser's parser; ValueError (one line) for an unknown name."""
        from sgl.api.reasoning import load_reasoning_parser

        return load_reasoning_parser(self.args.reasoning_parser)

    @cached_property
    def embedding_pooling(self) -> str | None:
        """With --is-embedding: how the checkpoint pools ("mean" | "last"); ValueError for one sgl lacks."""
        from sgl.core.pooling import pooling_method

        return pooling_method(self.model_path) if self.args.is_embedding else None

    @property
    def tm(self) -> TokenizerManager:
        # NOTE: the gate lets requests through only once the manager exists (ready or draining).
        assert self.manager is not None, "the tokenizer manager is not ready"
        return self.manager


class GateMiddleware:
    """503 while starting, draining or stopped; requests already inside are not affected."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.state.phase == "ready":
            await self.app(scope, receive, send)
            return
        why = {"starting": "the server is starting", "draining": "the server is shutting down"}.get(
            self.state.phase, "the server is stopped")
        await send_error(send, 503, error_bytes(503, why, code="unavailable"), [(b"retry-after", b"1")])
