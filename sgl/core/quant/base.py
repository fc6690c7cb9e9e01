"""The quantization contract: a method reads its checkpoint config, lays out its weights, and supplies the linear
method that computes with them.

Methods register by name through ``sgl_quantization_methods``. The name comes from ``--quantization NAME``, else
from the ``quant_method`` of the checkpoint's ``quantization_config`` (config.json). The core calls ``from_config``
once at startup, and ``linear_method()`` and ``moe_method()`` once each, through
``Platform.linear_method(method)`` and ``Platform.moe_method(method)``, when the model context is built; every linear
layer then creates and applies its weights through that LinearMethod, every MoE layer its experts through that
MoEMethod. A platform that accelerates a method answers with its own kernel there; the method's torch reference is
the fallback.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sgl.core.registry import Registry, select_class

if TYPE_CHECKING:
    from sgl.core.model.linear_method import LinearMethod
    from sgl.core.model.moe_method import MoEMethod
    from sgl.core.platform import Capabilities, Platform

logger = logging.getLogger(__name__)

FLAG = "--quantization"

NOT_YET_SUPPORTED: tuple[str, ...] = ()
"""Method names (SGLang's, and the checkpoints' ``quant_method``) that no in-tree plugin implements yet: refused at
startup with one line rather than served unquantized."""


class QuantizationMethod(ABC):
    """One quantization scheme, configured for one checkpoint."""

    @classmethod
    @abstractmethod
    def from_config(cls, checkpoint_config: Mapping[str, Any]) -> QuantizationMethod:
        """Built once at startup from the checkpoint's ``quantization_config`` (empty when the checkpoint has none
        and ``--quantization`` chose the method: online quantization). Raise ValueError for a config this method
        cannot serve; the message is the startup error."""

    @abstractmethod
    def linear_method(self) -> LinearMethod:
        """The torch reference LinearMethod for this layout: ``create_weights`` registers the method's parameters
        (each gets the layer's tensor-parallel ``weight_loader``), ``apply`` computes with them."""

    def check_platform(self, platform: Platform) -> None:
        """Raise ValueError when ``platform`` cannot run this method: one line naming the method, the platform and
        what would run it. Called once at startup, before any weight is built."""
        return None

    def bind_platform(self, platform: Platform) -> None:
        """Called once at startup, after ``check_platform``: keep what the linear methods need of the device (the FP8
        methods keep ``platform.fp8_dtype()``, the e4m3 encoding they store weights in)."""
        return None

    def kernel_linear_method(self, capabilities: Capabilities) -> LinearMethod | None:
        """A faster LinearMethod for a device with these capabilities (Triton kernels, scaled FP8 GEMMs), or None.

        NOTE: platforms ask this from ``Platform.linear_method``; the answer must compute what ``linear_method()``
        computes (it is tested against it), so a platform may always fall back to the reference.
        """
        return None

    def moe_method(self) -> MoEMethod | None:
        """The torch reference MoEMethod for this layout's expert weights, or None when the method has none (a MoE
        model then fails to build with one line saying so, rather than loading its experts unquantized)."""
        return None

    def kernel_moe_method(self, capabilities: Capabilities) -> MoEMethod | None:
        """A faster MoEMethod for these capabilities (a fused Triton kernel), or None; it must compute what
        ``moe_method()`` computes. Platforms ask this from ``Platform.moe_method``."""
        return None


def select_quantization(
    flag: str | None, checkpoint_config: Mapping[str, Any] | None, registry: Registry[type],
    platform: Platform | None = None,
) -> QuantizationMethod | None:
    """The method for this model: ``--quantization`` wins, else the checkpoint's ``quant_method``; None for neither.
    With ``platform``, a method that platform cannot run is refused here (``check_platform``).

    NOTE: a flag that names another method than the checkpoint's still hands that method the checkpoint's config;
    the method decides whether it can read it (``from_config`` raises ValueError when not).
    """
    checkpoint = dict(checkpoint_config or {})
    name = flag
    if name is None and checkpoint:
        name = checkpoint.get("quant_method")
        if not isinstance(name, str) or not name:
            raise ValueError("the checkpoint's quantization_config has no quant_method; pass --quantization NAME")
    if name is None:
        return None
    cls = select_class(registry, name, FLAG, QuantizationMethod, NOT_YET_SUPPORTED)
    method = cls.from_config(checkpoint)
    if not isinstance(method, QuantizationMethod):
        raise ValueError(f"{FLAG} {name}: {cls.__qualname__}.from_config returned {type(method).__name__}")
    if platform is not None:
        method.check_platform(platform)
        method.bind_platform(platform)
    logger.info("quantization: %s (%s, %s)", name, cls.__qualname__,
                "from the checkpoint" if checkpoint else "quantized at load")
    return method
