"""The hooks every platform running sgl's portable Triton pieces (``sgl.kernels``) answers alike.

Not a plugin. Importing ``sgl.kernels`` imports triton, so each hook checks that triton is installed and imports the
kernels only then; a platform without triton falls back to the torch reference and logs it once.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from sgl.core.ops.table import Ops, reference_ops
from sgl.core.platform import Platform

if TYPE_CHECKING:
    from sgl.core.attention.base import AttentionBackend
    from sgl.core.model.linear_method import LinearMethod

logger = logging.getLogger(__name__)


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _log_once(message: str) -> None:
    logger.warning(message)


def portable_or_reference_ops(triton_available: bool, what: str) -> Ops:
    """The portable Triton op table, or without triton (logged once, naming ``what`` falls back) the reference's."""
    if not triton_available:
        _log_once(f"triton is not installed: {what} run as torch reference ops")
        return reference_ops()
    from sgl import kernels

    return kernels.portable_ops()


class PortableTritonPlatform(Platform):
    """Triton attention, skinny GEMMs, the portable op table and decode graphs, where triton is installed."""

    def default_attention_backend(self) -> str:
        if has_triton():
            return "triton"
        _log_once(
            f"triton is not installed: attention runs on the torch_native backend (pip install 'sgl[{self.name}]')"
        )
        return "torch_native"

    def attention_backend(self, name: str, runner: Any) -> AttentionBackend:
        # NOTE: the portable Triton backend is sgl's own (sgl.kernels), not another vendor plugin's: build it directly,
        # so the platform works whether or not the cuda plugin registered the name.
        if name == "triton":
            from sgl.kernels.attention_backend import TritonAttnBackend

            return TritonAttnBackend(runner)
        return super().attention_backend(name, runner)

    def linear_method(self, quant_config: Any = None) -> LinearMethod:
        if quant_config is not None or not has_triton():
            return super().linear_method(quant_config)
        from sgl.kernels.linear_method import SkinnyLinearMethod

        return SkinnyLinearMethod()

    def ops(self) -> Ops:
        return portable_or_reference_ops(has_triton(), "norms, rope and activations")

    def graph_runner(self, runner: Any) -> Any:
        if not has_triton():
            _log_once(f"triton is not installed: decode graphs are off (pip install 'sgl[{self.name}]')")
            return None
        from sgl.kernels.graph_runner import graph_runner_for

        return graph_runner_for(runner, self)
