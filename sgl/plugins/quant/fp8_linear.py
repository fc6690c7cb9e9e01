"""The torch reference FP8 linear method: fp8 weights with block, per-channel or per-tensor scales, applied by
emulating the scaled FP8 GEMM (activations rounded through e4m3 as the device kernel would, then a float matmul)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from sgl.core.model.linear_method import LinearMethod, ShardLayout
from sgl.plugins.quant import fp8_math as fm
from sgl.plugins.quant.params import dummy_normal_cast, dummy_scale, expand_per_shard, quant_param, replace_param

WeightScheme = Literal["block", "channel", "tensor"]
ActScheme = Literal["none", "token", "group", "static"]


@dataclass(frozen=True)
class Fp8Scheme:
    """One FP8 layout. ``serialized`` False: the checkpoint is dense and weights are quantized per channel at load."""

    weight: WeightScheme
    activation: ActScheme  # none: weight-only; token/group: dynamic per token (and per block[1] features); static
    block: tuple[int, int] | None = None
    serialized: bool = True
    scale_name: str = "weight_scale"  # HF's block-wise checkpoints call it weight_scale_inv (it still multiplies)


class Fp8LinearMethod(LinearMethod):
    """After loading, every scheme holds ``weight`` (fp8 [out, in]) and either a block scale (``scale_name``) or a
    per-row ``weight_scale`` [out, 1]; static activations hold one ``input_scale``.

    ``fp8_dtype`` is the device's e4m3 encoding (``Platform.fp8_dtype``): with ``float8_e4m3fnuz`` (AMD MI300) the
    loaded OCP weights are re-encoded after loading and activations are quantized into fnuz.
    """

    def __init__(self, scheme: Fp8Scheme, fp8_dtype: torch.dtype = fm.FP8) -> None:
        if fp8_dtype not in (fm.FP8, fm.FNUZ):
            raise ValueError(f"fp8 weights: unsupported device encoding {fp8_dtype}; supported: {fm.FP8}, {fm.FNUZ}")
        self.scheme = scheme
        self.fp8_dtype = fp8_dtype

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, bias: bool, dtype: torch.dtype
    ) -> None:
        s = self.scheme
        layer.register_parameter(
            "bias", nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        )
        if not s.serialized:
            layer.register_parameter(
                "weight", nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
            )
            return
        quant_param(layer, "weight", torch.empty(out_features, in_features, dtype=fm.FP8), ShardLayout(),
                    dummy_normal_cast)
        shards = len(layer.output_partition_sizes)
        if s.weight == "block":
            assert s.block is not None
            b0, b1 = s.block
            if shards > 1 and any(n % b0 for n in layer.output_partition_sizes):
                raise ValueError(
                    f"fp8 block {list(s.block)}: merged output slices {layer.output_partition_sizes} are not whole "
                    f"blocks of {b0} rows"
                )
            shape = (-(-out_features // b0), -(-in_features // b1))
            quant_param(layer, s.scale_name, torch.empty(shape, dtype=torch.float32), ShardLayout(0, 1, b0, b1),
                        dummy_scale)
        elif s.weight == "channel":
            quant_param(layer, s.scale_name, torch.empty(out_features, 1, dtype=torch.float32), ShardLayout(0, None),
                        dummy_scale)
        else:
            quant_param(layer, s.scale_name, torch.empty(shards, dtype=torch.float32),
                        ShardLayout(None, None, per_shard=True), dummy_scale)
        if s.activation == "static":
            quant_param(layer, "input_scale", torch.empty(shards, dtype=torch.float32),
                        ShardLayout(None, None, per_shard=True), dummy_scale)

    @torch.no_grad()
    def process_weights_after_loading(self, layer: nn.Module) -> None:
        s = self.scheme
        if not s.serialized:
            weight, scale = fm.quantize_per_row(cast(torch.Tensor, layer.weight), self.fp8_dtype)
            replace_param(layer, "weight", weight)
            replace_param(layer, "weight_scale", scale)
            return
        if self.fp8_dtype == fm.FNUZ:
            self._to_fnuz(layer)
        if s.weight == "tensor":  # NOTE: each merged slice keeps its own scale, spread over its rows
            per_shard = cast(torch.Tensor, getattr(layer, s.scale_name))
            replace_param(layer, "weight_scale", expand_per_shard(per_shard, layer.output_partition_sizes))
        elif s.weight == "channel" and s.scale_name != "weight_scale":
            replace_param(layer, "weight_scale", cast(torch.Tensor, getattr(layer, s.scale_name)).float())
        if s.activation == "static":  # one scale for the shared input: the largest slice's, as a device kernel does
            replace_param(layer, "input_scale", cast(torch.Tensor, layer.input_scale).max().reshape(1))

    def _to_fnuz(self, layer: nn.Module) -> None:
        """The checkpoint's bytes read as fnuz mean half their value: every scale doubles, so each weight and every
        static input scale keeps its meaning."""
        replace_param(layer, "weight", fm.to_e4m3fnuz(cast(torch.Tensor, layer.weight)))
        replace_param(layer, self.scheme.scale_name, cast(torch.Tensor, getattr(layer, self.scheme.scale_name)) * 2)
        if self.scheme.activation == "static":
            replace_param(layer, "input_scale", cast(torch.Tensor, layer.input_scale) * 2)

    def dequantized_weight(self, layer: nn.Module) -> torch.Tensor:
        """The float32 weight this layer computes with (the oracle for fast kernels)."""
        w = cast(torch.Tensor, layer.weight).float()
        if self.scheme.weight == "block" and self.scheme.serialized:
            assert self.scheme.block is not None
            scale = cast(torch.Tensor, getattr(layer, self.scheme.scale_name)).float()
            return w * fm.expand_blocks(scale, w.shape[0], w.shape[1], self.scheme.block)
        return w * cast(torch.Tensor, layer.weight_scale).float()

    def quantize_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``x`` [tokens, in] as the scaled GEMM sees it (rounded through e4m3 unless weight-only)."""
        act = self.scheme.activation if self.scheme.serialized else "token"
        if act == "token":
            return fm.fake_quantize_per_token_group(x, x.shape[-1], self.fp8_dtype)
        if act == "group":
            assert self.scheme.block is not None
            return fm.fake_quantize_per_token_group(x, self.scheme.block[1], self.fp8_dtype)
        if act == "static":
            return fm.fake_quantize_static(x, cast(torch.Tensor, layer.input_scale).float(), self.fp8_dtype)
        return x.float()

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        out = F.linear(self.quantize_input(layer, x2), self.dequantized_weight(layer)).to(x.dtype)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], out.shape[-1])
