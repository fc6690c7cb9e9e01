"""A GEMM hook for Triton platforms: dense weights, with a weight-streaming kernel for a handful of rows."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from sgl.core.model.linear import GatedActivation, UnquantizedLinearMethod
from sgl.kernels.skinny_gemm import GATED_ACTIVATIONS, MAX_ROWS, skinny_gemm, split_tickets

_STREAMED_DTYPES = (torch.bfloat16, torch.float16)


class SkinnyLinearMethod(UnquantizedLinearMethod):
    """The vendor GEMM, except at <= 16 rows (decode at small batch), where the product only streams the weight.

    NOTE: there cuBLAS (H200) reaches 72-85% of the memory bandwidth on the attention projections (o_proj 3.1 TB/s)
    and sgl.kernels.skinny_gemm 85-95% (benchmarks/skinny_gemm_sweep.py); at batch 1 the weights are the whole step.
    """

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """The layer's split tickets, so its skinny GEMM sums K splits in-kernel (one launch, not two).

        NOTE: here, before any graph is captured, and one set per layer: a layer never runs on two streams at once.
        Without layer fusion (ServerArgs.enable_layer_fusion off) the layer keeps the separate reduce kernel.
        """
        super().process_weights_after_loading(layer)
        w = cast(torch.Tensor, layer.weight)
        fusion = getattr(getattr(layer, "ctx", None), "layer_fusion", False)
        if fusion and w.dim() == 2 and w.dtype in _STREAMED_DTYPES:
            layer.register_buffer("split_tickets", split_tickets(w.shape[0], w.shape[1], w.device), persistent=False)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        w = cast(torch.Tensor, layer.weight)
        if _streamed(x, w):
            return skinny_gemm(x, w, bias, tickets=_tickets(layer))
        return F.linear(x, w, bias)

    def apply_gated(
        self, layer: nn.Module, gate_up: torch.Tensor, act: GatedActivation, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Where the skinny GEMM runs, it applies the activation to its input tiles: one launch fewer per MLP."""
        w = cast(torch.Tensor, layer.weight)
        if _streamed(gate_up, w) and act.name in GATED_ACTIVATIONS:
            return skinny_gemm(gate_up, w, bias, gated=act.name, tickets=_tickets(layer))
        return super().apply_gated(layer, gate_up, act, bias)


def _tickets(layer: nn.Module) -> torch.Tensor | None:
    return cast("torch.Tensor | None", getattr(layer, "split_tickets", None))


def _streamed(x: torch.Tensor, w: torch.Tensor) -> bool:
    """The skinny GEMM's case: a handful of rows of the weight's half-precision dtype.

    NOTE: the choice depends on the row count only, so a padded graph batch and an eager one agree row for row."""
    return x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS and x.dtype == w.dtype and x.dtype in _STREAMED_DTYPES
