"""Hook implementations of the reasoning-parser plugin (light: names the parsers by string)."""

from __future__ import annotations

from sgl.core.hooks import hookimpl

_P = "sgl.plugins.reasoning_parsers.parsers"


@hookimpl
def sgl_reasoning_parsers() -> dict[str, str]:
    return {"qwen3": f"{_P}:Qwen3Parser", "deepseek-r1": f"{_P}:DeepSeekR1Parser"}
