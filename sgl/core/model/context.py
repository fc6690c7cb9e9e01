"""ModelContext: everything a layer constructor needs from outside the model, passed explicitly (no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sgl.core.distributed.communicator import SINGLE, ParallelState
from sgl.core.model.linear_method import LinearMethod
from sgl.core.model.moe_method import MoEMethod, UnquantizedMoEMethod
from sgl.core.ops.table import Ops

if TYPE_CHECKING:
    from sgl.core.platform import Platform
    from sgl.core.quant.base import QuantizationMethod


@dataclass(frozen=True)
class ModelContext:
    """The platform's answers (ops, GEMM and expert methods), this rank's place in TP, and where and how to build
    weights."""

    ops: Ops
    linear_method: LinearMethod
    parallel: ParallelState
    dtype: torch.dtype
    device: torch.device
    # NOTE: None when the quantization method has no layout for expert weights: a MoE layer then refuses to build
    moe_method: MoEMethod | None = field(default_factory=UnquantizedMoEMethod)
    # NOTE: layers may fuse ops across the Ops and LinearMethod contracts (the attention prologue, the gated down
    # projection); off, each op runs on its own (ServerArgs.enable_layer_fusion)
    layer_fusion: bool = False

    @classmethod
    def from_platform(
        cls,
        platform: Platform,
        dtype: torch.dtype,
        parallel: ParallelState = SINGLE,
        device: torch.device | None = None,
        quant_config: QuantizationMethod | None = None,
        layer_fusion: bool = False,
    ) -> ModelContext:
        return cls(
            ops=platform.ops(),
            linear_method=platform.linear_method(quant_config),
            parallel=parallel,
            dtype=dtype,
            device=device if device is not None else platform.device(parallel.device),
            moe_method=platform.moe_method(quant_config),
            layer_fusion=layer_fusion,
        )
