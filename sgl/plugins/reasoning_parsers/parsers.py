"""Qwen3 and DeepSeek-R1 thinking sections (SGLang's --reasoning-parser names)."""

from __future__ import annotations

from sgl.api.reasoning import ReasoningParser


class Qwen3Parser(ReasoningParser):
    """Qwen3 writes ``<think>`` itself (with enable_thinking false its template closes an empty section)."""


class DeepSeekR1Parser(ReasoningParser):
    """DeepSeek-R1's template ends the prompt with ``<think>\\n``: the output starts inside the section."""

    in_prompt = True
