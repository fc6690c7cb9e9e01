"""Servers with a tool-call parser and a chat template that renders tools, tool calls and tool results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.api.conftest import API_KEY, SHARED_ARGS, ServerProc, start_server

TEMPLATE = Path(__file__).with_name("tool_template.jinja")


def tool_server(parser: str, *extra: str) -> ServerProc:
    # NOTE: no jump-forward: a scripted (grammar-forced) output then streams token by token, as a model writes it
    srv = start_server(*SHARED_ARGS, "--tool-call-parser", parser, "--chat-template", str(TEMPLATE),
                       "--disable-jump-forward", *extra)
    srv.api_key = API_KEY
    return srv


def client_of(srv: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key=srv.api_key, _strict_response_validation=True)


@pytest.fixture(scope="module")
def qwen_server() -> Iterator[ServerProc]:
    srv = tool_server("qwen25")
    try:
        yield srv
    finally:
        srv.stop()
