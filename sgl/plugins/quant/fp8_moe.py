"""FP8 experts: the MoEMethod of the FP8 quantization methods (``fp8`` and ``compressed-tensors``).

- block-wise (DeepSeek-V3, Qwen3-*-FP8): each expert's ``gate_proj``/``up_proj``/``down_proj`` carry an e4m3
  ``weight`` and a float32 ``weight_scale_inv`` per ``b0 x b1`` tile; they load into ``w13_weight [E, 2I, H]`` with
  ``w13_weight_scale_inv [E, 2I / b0, H / b1]`` and ``w2_weight [E, H, I]`` with ``w2_weight_scale_inv
  [E, H / b0, I / b1]`` (rounded up); inputs are quantized per token and ``b1`` features.
- per-channel (compressed-tensors ``channel``): ``weight_scale [out, 1]`` per expert and projection, loaded into
  ``<group>_weight_scale [E, rows, 1]``.
- per-tensor (compressed-tensors ``tensor``, ``fp8`` without a block size): one ``weight_scale`` per expert and
  projection, kept per slice (``w13_weight_scale [E, 2]``: gate's, up's) and after loading spread over its rows into
  ``[E, rows, 1]``, as a merged linear spreads its slices' scales: a per-tensor scale is a per-row scale repeated,
  so it computes exactly what the checkpoint says (no requantization to a shared gate-up scale).
- online (``--quantization fp8`` on a dense checkpoint): dense experts quantized per output row after loading.

Inputs follow the scheme, as the same method's linear layers do: dynamic per token (and ``b1`` features for
block-wise), static, or unquantized (weight-only). A static ``input_scale`` comes per expert and projection; the
experts of a layer take the largest of each GEMM's (``w13_input_scale``, ``w2_input_scale``), one scale for the input
that every expert's GEMM shares, as a fused kernel needs and as the merged linear takes its slices' largest. The
reference below dequantizes the weights and runs the core's reference MoE on e4m3-rounded inputs; the Triton method
computes the same with fp8 operands.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from sgl.core.model.linear_method import ShardLayout
from sgl.core.model.moe_method import MoEMethod
from sgl.core.ops import moe as reference_moe
from sgl.plugins.quant import fp8_math as fm
from sgl.plugins.quant.fp8_linear import Fp8Scheme
from sgl.plugins.quant.params import dummy_normal_cast, dummy_scale, quant_param, replace_param

if TYPE_CHECKING:
    from sgl.core.ops.table import Ops

GROUPS = ("w13", "w2")
_WHOLE_ROW = 1 << 62  # a group longer than any row: one scale per token


def check_moe_scheme(scheme: Fp8Scheme) -> None:
    """The FP8 layouts experts support: block-wise with per-token-group inputs, per-channel or per-tensor weights
    with per-token, static or no input quantization, and online. One line otherwise."""
    if not scheme.serialized:
        return
    if (scheme.weight == "block") != (scheme.activation == "group"):
        raise ValueError(f"MoE experts: FP8 {scheme.weight} weight scales with {scheme.activation} activations are not "
                         "supported")


class Fp8MoEMethod(MoEMethod):
    """After loading, each group (``w13``, ``w2``) holds an fp8 ``<group>_weight`` and its scale: the block scale
    ``<group>_weight_scale_inv`` (block-wise), or a per-row ``<group>_weight_scale [E, rows, 1]`` (every other
    scheme); static inputs add ``<group>_input_scale [1]``."""

    def __init__(self, scheme: Fp8Scheme, fp8_dtype: torch.dtype = fm.FP8) -> None:
        self.scheme = scheme
        self.fp8_dtype = fp8_dtype

    @property
    def block(self) -> tuple[int, int] | None:
        return self.scheme.block if self.scheme.serialized else None

    @property
    def activation(self) -> str:
        """How each expert GEMM's input is quantized: ``group`` (block-wise), ``token``, ``static`` or ``none``."""
        return self.scheme.activation if self.scheme.serialized else "token"

    def scale_name(self, group: str) -> str:
        return f"{group}_{self.scheme.scale_name if self.block is not None else 'weight_scale'}"

    def create_weights(
        self, layer: nn.Module, num_experts: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype
    ) -> None:
        check_moe_scheme(self.scheme)  # NOTE: here, not at construction: a dense model of that layout still serves
        e, h, i = num_experts, hidden_size, intermediate_size
        shapes = {"w13": (2 * i, h), "w2": (h, i)}
        if not self.scheme.serialized:
            for group, (rows, cols) in shapes.items():
                layer.register_parameter(
                    f"{group}_weight", nn.Parameter(torch.empty(e, rows, cols, dtype=dtype), requires_grad=False)
                )
            return
        if self.block is not None:
            self._check_blocks(layer, i)
        for group, (rows, cols) in shapes.items():
            slices = 2 if group == "w13" else 1
            quant_param(layer, f"{group}_weight", torch.empty(e, rows, cols, dtype=fm.FP8), ShardLayout(),
                        dummy_normal_cast)
            if self.block is not None:
                b0, b1 = self.block
                scale, layout = torch.empty(e, -(-rows // b0), -(-cols // b1)), ShardLayout(0, 1, b0, b1)
            elif self.scheme.weight == "channel":
                scale, layout = torch.empty(e, rows, 1), ShardLayout(0, None)
            else:
                scale, layout = torch.empty(e, slices), ShardLayout(None, None, per_shard=True)
            quant_param(layer, self.scale_name(group), scale.float(), layout, dummy_scale)
            if self.activation == "static":
                # NOTE: every expert's, on every rank: the layer's input scale is their largest, the same on all ranks
                every = int(getattr(layer, "num_experts", e))
                param = quant_param(layer, f"{group}_input_scale", torch.empty(every, slices, dtype=torch.float32),
                                    ShardLayout(None, None, per_shard=True), dummy_scale)
                param.all_experts = True  # type: ignore[attr-defined]

    def _check_blocks(self, layer: nn.Module, i: int) -> None:
        assert self.block is not None
        b0, b1 = self.block
        tp = int(getattr(layer, "tp_size", 1))
        # NOTE: gate and up stack into one tensor whose block rows must not straddle them; a TP split of down's
        # input must start on a block
        if i % b0 or (tp > 1 and i % b1):
            raise ValueError(f"fp8 block {[b0, b1]}: the experts' intermediate size on this rank ({i}) is not a whole "
                             f"number of {b0 if i % b0 else b1}-feature blocks; use fewer TP ranks or --ep-size")

    @torch.no_grad()
    def process_weights_after_loading(self, layer: nn.Module) -> None:
        for group in GROUPS:
            weight = cast(torch.Tensor, getattr(layer, f"{group}_weight"))
            if not self.scheme.serialized:
                q, scale = fm.quantize_per_row(weight.reshape(-1, weight.shape[-1]), self.fp8_dtype)
                replace_param(layer, f"{group}_weight", q.view(weight.shape))
                replace_param(layer, self.scale_name(group), scale.view(*weight.shape[:2], 1))
                continue
            # NOTE: the same bytes mean half as much in fnuz: every scale doubles
            factor = 2.0 if self.fp8_dtype == fm.FNUZ else 1.0
            if self.fp8_dtype == fm.FNUZ:
                replace_param(layer, f"{group}_weight", fm.to_e4m3fnuz(weight))
            scale = cast(torch.Tensor, getattr(layer, self.scale_name(group))).float() * factor
            if self.scheme.weight == "tensor":  # one scale per slice (gate, up; down) spread over its rows
                scale = scale.repeat_interleave(weight.shape[1] // scale.shape[1], dim=1).unsqueeze(-1)
            replace_param(layer, self.scale_name(group), scale)
            if self.activation == "static":
                inputs = cast(torch.Tensor, getattr(layer, f"{group}_input_scale")).float() * factor
                replace_param(layer, f"{group}_input_scale", inputs.max().reshape(1))

    def dequantized(self, layer: nn.Module, group: str) -> torch.Tensor:
        """``<group>_weight`` as float32 ``[E, rows, cols]``: each expert's values times its scales."""
        w = cast(torch.Tensor, getattr(layer, f"{group}_weight")).float()
        scale = cast(torch.Tensor, getattr(layer, self.scale_name(group))).float()
        if self.block is None:
            return w * scale
        _, rows, cols = w.shape
        b0, b1 = self.block
        return w * scale.repeat_interleave(b0, 1)[:, :rows].repeat_interleave(b1, 2)[:, :, :cols]

    @property
    def input_group(self) -> int:
        """Features per dynamic activation scale: the block's columns, or a whole row (per token)."""
        return self.block[1] if self.block is not None else _WHOLE_ROW

    def input_quantizer(self, layer: nn.Module, group: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What the input of ``group``'s GEMM becomes in the reference: rounded through e4m3 by the scheme's
        activation scales, or left as it is (weight-only)."""
        if self.activation == "none":
            return None
        if self.activation == "static":
            scale = cast(torch.Tensor, getattr(layer, f"{group}_input_scale")).float()
            return functools.partial(fm.fake_quantize_static, scale=scale, dtype=self.fp8_dtype)
        return functools.partial(_fake_quantize, group=self.input_group, dtype=self.fp8_dtype)

    def apply(
        self, layer: nn.Module, ops: Ops, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        activation: str,
    ) -> torch.Tensor:
        out = reference_moe.fused_moe(x.float(), self.dequantized(layer, "w13"), self.dequantized(layer, "w2"),
                                      topk_weights, topk_ids, activation, self.input_quantizer(layer, "w13"),
                                      hidden_dtype=x.dtype, quantize_down=self.input_quantizer(layer, "w2"))
        return out.to(x.dtype)


def _fake_quantize(x: torch.Tensor, group: int, dtype: torch.dtype) -> torch.Tensor:
    return fm.fake_quantize_per_token_group(x, group, dtype)
