"""Checks the methods share: which modules a checkpoint leaves unquantized, and whether a platform holds fp8."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sgl.core.platform import Platform

# NOTE: quantization applies to the linear layers and MoE experts; these modules are never quantized here (the head,
# the embedding, every norm, MoE routers), so a checkpoint that leaves them unquantized asks for what happens anyway.
# Qwen3-MoE FP8 releases list each layer's norms and ``mlp.gate`` router; llm-compressor's MoE releases write the
# routers as regexes (``re:.*mlp.gate$``, Mixtral's ``re:.*block_sparse_moe.gate``).
_NEVER_QUANTIZED = ("lm_head", "embed_tokens", "norm", "mlp.gate", "shared_expert_gate", "block_sparse_moe.gate")


def _module_suffix(entry: str) -> str:
    """An ignore entry as the name ending it matches: a ``re:.*NAME$`` regex (llm-compressor's form) gives NAME."""
    if not entry.startswith("re:"):
        return entry
    return entry[3:].removeprefix(".*").removesuffix("$").removesuffix(".*")


def refuse_ignored_linears(method: str, names: Iterable[str] | None) -> None:
    """Skipping individual linear layers is not supported: a config that asks for it is refused, naming them."""
    others = [n for n in (names or ()) if not _module_suffix(n).endswith(_NEVER_QUANTIZED)]
    if others:
        shown = ", ".join(others[:5]) + (f", ... ({len(others)} in all)" if len(others) > 5 else "")
        raise ValueError(f"{method}: checkpoints that leave linear layers unquantized are not supported yet ({shown})")


def require_float8(method: str, platform: Platform, runs_on: str) -> None:
    """One line when the platform's device has no float8 tensors, which every FP8/NVFP4 layout is stored in."""
    try:
        torch.zeros(1, dtype=torch.float8_e4m3fn, device=platform.device()).float()
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"--quantization {method}: the {platform.name} platform cannot run it (its device has no float8 tensors: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); {runs_on}"
        ) from None
