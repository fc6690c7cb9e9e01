"""The GEMM contract of every linear layer: a LinearMethod creates the layer's weights and applies them.

A leaf module (torch only): the model context, the platform and quantization methods name the contract without
importing the layers that use it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class LinearMethod(ABC):
    """How a linear layer's weights are created and applied (a quantization method supplies its own).

    NOTE: ``create_weights`` registers parameters on ``layer`` (at least ``weight`` and ``bias``, None without a
    bias); the layer then points every parameter it holds at its tensor-parallel ``weight_loader``.
    """

    @abstractmethod
    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, bias: bool, dtype: torch.dtype
    ) -> None:
        """Registers this rank's parameters (``in_features``/``out_features`` are already this rank's shard)."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x [tokens, in] -> [tokens, out]`` with the layer's parameters, plus ``bias`` when given."""


class UnquantizedLinearMethod(LinearMethod):
    """A dense ``weight [out, in]`` (+ optional ``bias [out]``) applied with F.linear: the torch reference."""

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, bias: bool, dtype: torch.dtype
    ) -> None:
        layer.register_parameter(
            "weight", nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        )
        layer.register_parameter(
            "bias", nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        )

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, cast(torch.Tensor, layer.weight), bias)
