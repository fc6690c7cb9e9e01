"""The torch reference W4A16 linear method for AWQ (GEMM layout) and GPTQ: unpack, dequantize per group, matmul.

Both keep the checkpoint's tensors as they are (the fast kernels read the same packed words):
- AWQ: ``qweight`` [in, out/8] (columns interleaved), ``qzeros`` [in/g, out/8], ``scales`` [in/g, out].
- GPTQ: ``qweight`` [in/8, out], ``qzeros`` [in/g, out/8] (v1 stores zero - 1), ``scales`` [in/g, out], and
  ``g_idx`` [in], each input's group (a permutation of groups under ``desc_act``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from sgl.core.model.linear_method import LinearMethod, ShardLayout
from sgl.plugins.quant.int4_pack import AWQ_UNPACK_ORDER, PACK, unpack_cols, unpack_rows
from sgl.plugins.quant.params import DUMMY_SCALE, dummy_bits, quant_param

_DUMMY_INT4_SCALE = DUMMY_SCALE / 5  # NOTE: (q - z) of random nibbles has a spread of ~5


@dataclass(frozen=True)
class Int4Scheme:
    fmt: Literal["awq", "gptq"]
    group_size: int  # -1: one group over the whole input
    desc_act: bool = False
    zero_offset: int = 0  # added to each stored zero (1 for GPTQ's v1 format)


def dequantize(
    scheme: Int4Scheme, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_of: torch.Tensor
) -> torch.Tensor:
    """Float32 ``[..., out, in]`` from packed ``[..., ...]`` tensors (leading dims: experts): each input row ``k``
    takes zero and scale of group ``group_of[..., k]``."""
    awq = scheme.fmt == "awq"
    zeros = unpack_cols(qzeros, AWQ_UNPACK_ORDER if awq else None).float() + scheme.zero_offset  # [..., G, out]
    q = unpack_cols(qweight, AWQ_UNPACK_ORDER) if awq else unpack_rows(qweight)  # [..., in, out]
    index = group_of.long().unsqueeze(-1).expand(*group_of.shape, q.shape[-1])
    w_t = (q.float() - zeros.gather(-2, index)) * scales.float().gather(-2, index)
    return w_t.transpose(-1, -2)


def _dummy_const(value: float):  # type: ignore[no-untyped-def]
    @torch.no_grad()
    def fill(param: nn.Parameter, gen: torch.Generator) -> None:
        param.data.fill_(value)

    return fill


def _dummy_g_idx(group: int):  # type: ignore[no-untyped-def]
    @torch.no_grad()
    def fill(param: nn.Parameter, gen: torch.Generator) -> None:
        param.data.copy_(torch.arange(param.shape[0], device=param.device) // group)

    return fill


def _shared_g_idx_loader(layer: nn.Module):  # type: ignore[no-untyped-def]
    """Merged projections (q|k|v, gate|up) hold one g_idx: every slice's must agree, or the layer would compute
    with the wrong groups for all but the last."""
    seen: list[bool] = []

    def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        before = param.data.clone() if seen else None
        layer.weight_loader(param, loaded, shard_id)
        if before is not None and not torch.equal(before, param.data):
            raise ValueError("g_idx differs between the merged projections (act orders must match to merge them)")
        seen.append(True)

    return load


class Int4LinearMethod(LinearMethod):
    def __init__(self, scheme: Int4Scheme) -> None:
        self.scheme = scheme

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, bias: bool, dtype: torch.dtype
    ) -> None:
        s = self.scheme
        full_in = int(getattr(layer, "full_in_features", in_features))
        group = full_in if s.group_size == -1 else s.group_size
        if in_features % group or in_features % PACK:
            raise ValueError(f"{s.fmt}: input features {in_features} are not whole groups of {group}")
        if any(n % PACK for n in layer.output_partition_sizes):
            raise ValueError(f"{s.fmt}: output slices {layer.output_partition_sizes} are not multiples of {PACK}")
        # NOTE: a row-parallel layer whose groups do not follow its input shard (one group overall, or desc_act's
        # permuted groups) keeps every group's scales and zeros; g_idx (sharded) indexes them.
        split_groups = s.group_size != -1 and not s.desc_act
        groups = in_features // group if split_groups else full_in // group
        gdim = 0 if split_groups else None
        layer.register_parameter(
            "bias", nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        )
        if s.fmt == "awq":
            quant_param(layer, "qweight", torch.empty(in_features, out_features // PACK, dtype=torch.int32),
                        ShardLayout(1, 0, PACK, 1), dummy_bits)
        else:
            quant_param(layer, "qweight", torch.empty(in_features // PACK, out_features, dtype=torch.int32),
                        ShardLayout(1, 0, 1, PACK), dummy_bits)
            g_idx = quant_param(layer, "g_idx", torch.empty(in_features, dtype=torch.int32), ShardLayout(None, 0),
                                _dummy_g_idx(group))
            g_idx.weight_loader = _shared_g_idx_loader(layer)  # type: ignore[attr-defined]
        quant_param(layer, "qzeros", torch.empty(groups, out_features // PACK, dtype=torch.int32),
                    ShardLayout(1, gdim, PACK, group), dummy_bits)
        quant_param(layer, "scales", torch.empty(groups, out_features, dtype=torch.float16),
                    ShardLayout(1, gdim, 1, group), _dummy_const(_DUMMY_INT4_SCALE))
        layer.int4_group = group  # type: ignore[assignment]

    def dequantized_weight(self, layer: nn.Module) -> torch.Tensor:
        """The float32 ``[out, in]`` weight the layer computes with (the oracle for the fast kernels)."""
        qweight = cast(torch.Tensor, layer.qweight)
        rows = qweight.shape[0] * (1 if self.scheme.fmt == "awq" else PACK)
        if self.scheme.desc_act:
            group_of = cast(torch.Tensor, layer.g_idx).long()
        else:  # NOTE: g_idx (if shipped) holds global groups; this shard's scales start at its own first group
            group_of = torch.arange(rows, device=qweight.device) // int(layer.int4_group)  # type: ignore[arg-type]
        return dequantize(self.scheme, qweight, cast(torch.Tensor, layer.qzeros), cast(torch.Tensor, layer.scales),
                          group_of)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        out = F.linear(x.float(), self.dequantized_weight(layer)).to(x.dtype)
        return out + bias if bias is not None else out
