"""Mistral: the Llama graph under another name.

NOTE: sliding-window attention is not applied; Mistral v0.2+ configs set sliding_window to null, and v0.1's window
(4096) only matters past 4096 tokens.
"""

from __future__ import annotations

from sgl.core.models.llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    """Same weights and numerics as Llama."""
