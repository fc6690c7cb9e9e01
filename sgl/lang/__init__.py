"""The frontend language: SGLang-style programs that talk to a server over HTTP only.

NOTE: nothing here imports sgl.core, sgl.api or plugins; a client machine needs neither torch nor the server.
"""

from __future__ import annotations

from sgl.lang.backend.base import Backend, ChoiceScore, GenResult, SamplingArgs
from sgl.lang.backend.openai_compatible import OpenAICompatible
from sgl.lang.backend.runtime_endpoint import RuntimeEndpoint
from sgl.lang.chat import ChatTemplate
from sgl.lang.errors import BackendError
from sgl.lang.ir import (
    assistant,
    assistant_begin,
    assistant_end,
    gen,
    select,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from sgl.lang.program import SglFunction, function, get_default_backend, set_default_backend
from sgl.lang.state import ForkGroup, ProgramState

__all__ = [
    "Backend", "BackendError", "ChatTemplate", "ChoiceScore", "ForkGroup", "GenResult", "OpenAICompatible",
    "ProgramState", "RuntimeEndpoint", "SamplingArgs", "SglFunction", "assistant", "assistant_begin",
    "assistant_end", "function", "gen", "get_default_backend", "select", "set_default_backend", "system",
    "system_begin", "system_end", "user", "user_begin", "user_end",
]
