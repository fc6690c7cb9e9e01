"""The GEMM contract of every linear layer: a LinearMethod creates the layer's weights and applies them.

A leaf module (torch only): the model context, the platform and quantization methods name the contract without
importing the layers that use it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn


class ShardLayout(NamedTuple):
    """How a parameter's tensor maps onto the layer's features, so the layer's loader can shard any layout.

    Set as the ``shard_layout`` attribute of a parameter (absent: a dense ``[out, in]`` weight, or ``[out]``).
    ``output_unit``/``input_unit`` are how many features one index along that dim covers: a block scale covers a
    block, a packed int32 covers 8 int4 values. ``per_shard``: one entry per merged slice (a per-tensor scale of q, k
    and v), indexed by the slice, never split.
    """

    output_dim: int | None = 0  # the tensor dim indexing output features; None: not split by output
    input_dim: int | None = 1  # the tensor dim indexing input features; None: not split by input
    output_unit: int = 1
    input_unit: int = 1
    per_shard: bool = False


DENSE_WEIGHT = ShardLayout()
DENSE_BIAS = ShardLayout(0, None)


def shard_layout(param: nn.Parameter) -> ShardLayout:
    layout = getattr(param, "shard_layout", None)
    if layout is not None:
        return cast(ShardLayout, layout)
    return DENSE_WEIGHT if param.dim() >= 2 else DENSE_BIAS


def narrow_features(t: torch.Tensor, dim: int | None, start: int, size: int, unit: int) -> torch.Tensor:
    """Features ``[start, start + size)`` of ``t`` along ``dim``, where one index covers ``unit`` features."""
    if dim is None:
        return t
    if start % unit:
        raise ValueError(f"a shard starting at feature {start} does not fall on the parameter's block of {unit}")
    return t.narrow(dim, start // unit, -(-size // unit))


class GatedActivation(NamedTuple):
    """``act(gate) * up`` over an input laid out ``[gate | up]``: ``op`` is the separate op (the Ops table's), ``name``
    (``silu``, ``gelu_tanh``) lets a GEMM kernel recognise the activation it may apply to its input tile instead."""

    name: str
    op: Callable[[torch.Tensor], torch.Tensor]


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

    def apply_gated(
        self, layer: nn.Module, gate_up: torch.Tensor, act: GatedActivation, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``apply(layer, act(gate) * up)`` for ``gate_up [tokens, 2 * in]``: an MLP's down projection.

        NOTE: the default runs the activation op, then ``apply``; a method whose kernel can apply the activation as it
        loads its input (saving a launch and a round trip through memory) overrides this, with the op's rounding:
        the activation rounded to the input dtype, then the product rounded.
        """
        return self.apply(layer, act.op(gate_up), bias)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Called once per layer after every weight arrived (checkpoint or dummy): repack, requantize, fold scales.

        NOTE: online quantization happens here (the layer loaded dense weights); the default keeps them as they are.
        """

    def dequantized_weight(self, layer: nn.Module) -> torch.Tensor:
        """The ``[out, in]`` float weight this layer computes with, for code that needs the matrix rather than the
        product (MLA folds ``kv_b_proj`` into its attention). A quantized layout overrides it with its dequantization.
        """
        return cast(torch.Tensor, layer.weight)


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
