"""AWQ and GPTQ experts (W4A16): the MoEMethod of the ``awq`` and ``gptq`` quantization methods.

Each expert's ``gate_proj``/``up_proj``/``down_proj`` carry the linear layout (``int4_linear``), stacked over experts
as they are, so the fused kernel reads the checkpoint's own words:

- AWQ: ``w13_qweight [E, H, 2I/8]`` (columns interleaved), ``w13_qzeros [E, H/g, 2I/8]``, ``w13_scales [E, H/g, 2I]``;
  ``w2_qweight [E, I, H/8]``, ``w2_qzeros [E, I/g, H/8]``, ``w2_scales [E, I/g, H]``.
- GPTQ: ``w13_qweight [E, H/8, 2I]``, ``w2_qweight [E, I/8, H]``, zeros and scales as AWQ's (zeros packed in order),
  and ``w13_g_idx [E, H]`` (one for gate and up: they share the input, and act order follows it) and ``w2_g_idx
  [E, I]``.

Under tensor parallelism down's input is split: its groups follow the split when the rank's share is whole groups;
under ``desc_act`` (or one group overall) every group's scales and zeros stay on each rank and the sharded ``g_idx``
indexes them, as in the dense row-parallel layer. The reference dequantizes the experts the batch hit and runs the
core's reference MoE; the Triton method dequantizes each int4 tile to the activations' dtype inside a grouped GEMM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from sgl.core.model.linear_method import ShardLayout
from sgl.core.model.moe_method import MoEMethod
from sgl.core.ops import moe as reference_moe
from sgl.plugins.quant.int4_linear import _DUMMY_INT4_SCALE, Int4Scheme, _dummy_const, dequantize
from sgl.plugins.quant.int4_pack import PACK
from sgl.plugins.quant.params import dummy_bits, quant_param

if TYPE_CHECKING:
    from sgl.core.ops.table import Ops

GROUPS = ("w13", "w2")


@torch.no_grad()
def _dummy_expert_g_idx(param: nn.Parameter, gen: torch.Generator) -> None:
    """Groups in input order for every expert (``group`` set on the parameter)."""
    rows = torch.arange(param.shape[1], device=param.device) // int(param.int4_group)  # type: ignore[attr-defined]
    param.data.copy_(rows.expand_as(param))


class Int4MoEMethod(MoEMethod):
    """After loading: ``<group>_qweight``, ``<group>_qzeros``, ``<group>_scales`` (and GPTQ's ``<group>_g_idx``) as
    loaded; ``layer.int4_groups`` holds each GEMM's group size (features along its input)."""

    def __init__(self, scheme: Int4Scheme) -> None:
        self.scheme = scheme

    def create_weights(
        self, layer: nn.Module, num_experts: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype
    ) -> None:
        s, e, h, i = self.scheme, num_experts, hidden_size, intermediate_size
        tp = int(getattr(layer, "tp_size", 1))
        sizes: dict[str, int] = {}
        for group, out, inp, full_in in (("w13", 2 * i, h, h), ("w2", h, i, i * tp)):
            g = full_in if s.group_size == -1 else s.group_size
            # NOTE: a split of down's input keeps its groups only when the rank's share is whole groups
            split_groups = group == "w13" or (s.group_size != -1 and not s.desc_act)
            if (split_groups and inp % g) or inp % PACK or i % PACK:
                raise ValueError(f"{s.fmt} experts: the intermediate size on this rank ({i}) or the hidden size ({h}) "
                                 f"is not a whole number of {g}-feature groups and 8-value words; use fewer TP ranks "
                                 "or --ep-size")
            groups = inp // g if split_groups else full_in // g
            gdim = 0 if split_groups else None
            if s.fmt == "awq":
                quant_param(layer, f"{group}_qweight", torch.empty(e, inp, out // PACK, dtype=torch.int32),
                            ShardLayout(1, 0, PACK, 1), dummy_bits)
            else:
                quant_param(layer, f"{group}_qweight", torch.empty(e, inp // PACK, out, dtype=torch.int32),
                            ShardLayout(1, 0, 1, PACK), dummy_bits)
                g_idx = quant_param(layer, f"{group}_g_idx", torch.empty(e, inp, dtype=torch.int32),
                                    ShardLayout(None, 0), _dummy_expert_g_idx)
                g_idx.int4_group = g  # type: ignore[attr-defined]
            quant_param(layer, f"{group}_qzeros", torch.empty(e, groups, out // PACK, dtype=torch.int32),
                        ShardLayout(1, gdim, PACK, g), dummy_bits)
            quant_param(layer, f"{group}_scales", torch.empty(e, groups, out, dtype=torch.float16),
                        ShardLayout(1, gdim, 1, g), _dummy_const(_DUMMY_INT4_SCALE))
            sizes[group] = g
        layer.int4_groups = sizes  # type: ignore[assignment]

    def tensors(self, layer: nn.Module, group: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                             torch.Tensor | None]:
        """``(qweight, qzeros, scales, g_idx)`` of ``group``; ``g_idx`` only where the groups are permuted."""
        def get(name: str) -> torch.Tensor:
            return cast(torch.Tensor, getattr(layer, f"{group}_{name}"))

        return get("qweight"), get("qzeros"), get("scales"), get("g_idx") if self.scheme.desc_act else None

    def dequantized(self, layer: nn.Module, group: str, experts: torch.Tensor) -> torch.Tensor:
        """Float32 ``[len(experts), out, in]``: the listed experts of ``group`` dequantized."""
        qweight, qzeros, scales, g_idx = self.tensors(layer, group)
        rows = qweight.shape[1] * (1 if self.scheme.fmt == "awq" else PACK)
        if g_idx is not None:
            group_of = g_idx[experts]
        else:  # NOTE: in input order; a TP shard's scales start at its own first group
            size = int(cast(dict[str, int], layer.int4_groups)[group])
            group_of = (torch.arange(rows, device=qweight.device) // size).expand(len(experts), rows)
        return dequantize(self.scheme, qweight[experts], qzeros[experts], scales[experts], group_of)

    def apply(
        self, layer: nn.Module, ops: Ops, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        activation: str,
    ) -> torch.Tensor:
        # NOTE: only the experts hit are dequantized
        hit, local_ids = reference_moe.experts_hit(topk_ids, cast(torch.Tensor, layer.w13_scales).shape[0])
        out = reference_moe.fused_moe(x.float(), self.dequantized(layer, "w13", hit),
                                      self.dequantized(layer, "w2", hit), topk_weights, local_ids, activation,
                                      hidden_dtype=x.dtype)
        return out.to(x.dtype)
