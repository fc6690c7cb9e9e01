"""Hook implementations of the tool-parser plugin (light: names the parsers by string)."""

from __future__ import annotations

from sgl.core.hooks import hookimpl

_P = "sgl.plugins.tool_parsers"


@hookimpl
def sgl_tool_call_parsers() -> dict[str, str]:
    # SGLang's --tool-call-parser names
    return {
        "qwen25": f"{_P}.hermes:HermesParser", "qwen": f"{_P}.hermes:HermesParser",
        "hermes": f"{_P}.hermes:HermesParser", "llama3": f"{_P}.llama3:Llama3Parser",
        "mistral": f"{_P}.mistral:MistralParser", "pythonic": f"{_P}.pythonic:PythonicParser",
        "deepseekv3": f"{_P}.deepseekv3:DeepSeekV3Parser",
    }
