"""Mixture-of-experts layers: the router (gate), the experts' fused weights, and loading per-expert checkpoints.

Every expert's gate and up projections live in one ``w13 [E, 2 * I, H]`` tensor and its down projection in
``w2 [E, H, I]``, so a fused kernel sees all experts at once; checkpoints store one tensor per expert and projection
(``experts.{e}.gate_proj.weight``, or a quantized layout's tensors: fp8 values and scales, packed int4 words),
which ``ExpertWeights`` routes into place. The context's MoEMethod decides which tensors exist and computes with them.
Under tensor parallelism each rank holds every expert's slice of the intermediate dimension and the partial outputs
are summed, as in a row-parallel linear.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sgl.core.model.expert_parallel import ExpertPlacement, expert_parallel_moe
from sgl.core.model.linear_method import ShardLayout, narrow_features, shard_layout
from sgl.core.ops.moe_routing import RoutingConfig, TopKOutput, select_experts

if TYPE_CHECKING:
    from sgl.core.model.context import ModelContext


class ExpertParam(NamedTuple):
    """Checkpoint tensors ``...experts.{e}.{source}.<suffix>`` load into ``...experts.{target}_<suffix>`` as
    ``shard`` (``<suffix>``: ``weight``, and a quantized layout's tensors: ``weight_scale_inv``, ``input_scale``,
    ``qweight``, ``qzeros``, ``scales``, ``g_idx``)."""

    source: str  # "gate_proj" (Qwen, DeepSeek) or "w1" (Mixtral)
    target: str  # "w13" or "w2"
    shard: str  # "w1" (gate), "w3" (up) or "w2" (down)


# NOTE: Hugging Face names (Qwen-MoE, DeepSeek) and Mixtral's original ones.
HF_EXPERT_PARAMS = (
    ExpertParam("gate_proj", "w13", "w1"),
    ExpertParam("up_proj", "w13", "w3"),
    ExpertParam("down_proj", "w2", "w2"),
)
MIXTRAL_EXPERT_PARAMS = (
    ExpertParam("w1", "w13", "w1"),
    ExpertParam("w3", "w13", "w3"),
    ExpertParam("w2", "w2", "w2"),
)

_EXPERT_NAME = re.compile(
    r"^(?P<prefix>.+\.experts)\.(?P<expert>\d+)\.(?P<proj>[A-Za-z0-9_]+)\.(?P<suffix>[A-Za-z][A-Za-z0-9_]*)$"
)


class FusedMoE(nn.Module):
    """The routed experts of one layer: ``forward(x, topk) -> [T, H]`` through the context's MoEMethod (dense
    experts: the platform's ``fused_moe`` op; a quantization method's own layout otherwise)."""

    def __init__(
        self, num_experts: int, hidden_size: int, intermediate_size: int, ctx: ModelContext,
        activation: str = "silu", reduce_results: bool = True,
    ) -> None:
        super().__init__()
        if ctx.moe_method is None:
            raise ValueError("MoE experts: the quantization method in use has no layout for expert weights; "
                             "docs/quantization.md lists the methods that have one")
        parallel = ctx.parallel
        # NOTE: under expert parallel a rank holds its experts whole; otherwise every expert's 1/tp slice
        self.placement = ExpertPlacement(num_experts, parallel.tp_rank if parallel.ep_size > 1 else 0,
                                         parallel.ep_size)
        tp = 1 if parallel.ep_size > 1 else parallel.tp_size
        if intermediate_size % tp:
            raise ValueError(f"expert intermediate size {intermediate_size} is not divisible by the TP size {tp}")
        self.ctx = ctx
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size // tp  # on this rank
        self.tp_rank, self.tp_size = (0, 1) if parallel.ep_size > 1 else (parallel.tp_rank, tp)
        self.activation = activation
        self.reduce_results = reduce_results
        self.moe_method = ctx.moe_method
        self.moe_method.create_weights(self, self.placement.local, hidden_size, self.intermediate_size, ctx.dtype)
        for p in self.parameters(recurse=False):
            p.weight_loader = self.weight_loader  # type: ignore[attr-defined]
            p.num_experts = num_experts  # type: ignore[attr-defined]  # all of them, for the loader's completeness check

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: tuple[int, str]) -> None:
        """Copies this rank's slice of expert ``shard_id[0]``'s ``shard_id[1]`` ("w1", "w3" or "w2") into ``param``;
        under expert parallel, an expert another rank holds is skipped, except into a parameter marked
        ``all_experts`` (indexed by the global expert id on every rank).

        NOTE: ``param``'s ``shard_layout`` maps one expert's ``[out, in]`` matrix onto its tensor (a block scale
        covers ``output_unit x input_unit`` features, a packed int32 eight values, and the dims may be swapped as in
        int4 layouts), so values and their scales slice by the same rule. A ``per_shard`` scalar (a per-tensor scale)
        goes to entry 0 (gate, down) or 1 (up) of its expert's row, as a merged linear keeps one per slice. A tensor
        not indexed by output features (GPTQ's ``g_idx``) is one for gate and up: the second must equal the first.
        """
        expert, shard = shard_id
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert {expert} is outside the model's {self.num_experts} experts")
        if getattr(param, "all_experts", False):
            pass  # NOTE: every rank holds every expert's entry (a layer-wide statistic: static input scales)
        elif not self.placement.holds(expert):
            return
        else:
            expert -= self.placement.first
        lay = shard_layout(param)
        if lay.per_shard:
            if loaded.numel() != 1:
                raise ValueError(f"shape mismatch: expert {expert} {shard} {tuple(loaded.shape)}, expected one scalar")
            param.data[expert, 1 if shard == "w3" else 0] = loaded.reshape(())
            return
        i = self.intermediate_size
        full = (self.hidden_size, i * self.tp_size) if shard == "w2" else (i * self.tp_size, self.hidden_size)
        want = _checkpoint_shape(lay, full, tuple(param.shape[1:]))
        if tuple(loaded.shape) != want:
            raise ValueError(f"shape mismatch: expert {expert} {shard} {tuple(loaded.shape)}, expected {want}")
        # down is split on its input features, gate and up on their outputs
        dim, unit = (lay.input_dim, lay.input_unit) if shard == "w2" else (lay.output_dim, lay.output_unit)
        src = narrow_features(loaded, dim, self.tp_rank * i, i, unit)
        dst = param.data[expert]
        if shard != "w2":
            if lay.output_dim is None:
                self._load_shared(param, expert, shard, dst, src)
                return
            dst = narrow_features(dst, lay.output_dim, 0 if shard == "w1" else i, i, lay.output_unit)
        if dst.shape != src.shape:
            raise ValueError(f"shape mismatch: expert {expert} {shard} slice {tuple(src.shape)} vs {tuple(dst.shape)}")
        dst.copy_(src)

    def _load_shared(self, param: nn.Parameter, expert: int, shard: str, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Gate's and up's copy of a tensor they share (one per expert): the first fills it, the second must agree."""
        seen: set[int] = getattr(param, "_shared_seen", set())
        if dst.shape != src.shape:
            raise ValueError(f"shape mismatch: expert {expert} {shard} slice {tuple(src.shape)} vs {tuple(dst.shape)}")
        if expert in seen:
            if not torch.equal(dst, src.to(dst.dtype)):
                raise ValueError(f"expert {expert}: gate and up projections differ in a tensor they must share")
            return
        dst.copy_(src)
        seen.add(expert)
        param._shared_seen = seen  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor, topk: TopKOutput) -> torch.Tensor:
        if self.placement.ep_size > 1:
            return expert_parallel_moe(x, topk, self.placement, self.ctx.parallel.comm, self._run_experts)
        out = self._run_experts(x, topk.weights, topk.ids)
        if self.reduce_results and self.tp_size > 1:
            out = self.ctx.parallel.comm.all_reduce(out)
        return out

    def _run_experts(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return self.moe_method.apply(self, self.ctx.ops, x, topk_weights, topk_ids, self.activation)

    def extra_repr(self) -> str:
        ep = f", ep={self.placement.ep_size} (local {self.placement.local})" if self.placement.ep_size > 1 else ""
        return f"experts={self.num_experts}{ep}, hidden={self.hidden_size}, inter={self.intermediate_size}"


def _checkpoint_shape(lay: ShardLayout, full: tuple[int, int], local: tuple[int, ...]) -> tuple[int, ...]:
    """The shape one expert's checkpoint tensor must have for a ``full`` ``(out, in)`` matrix: the output and input
    dims from the features (``unit`` features an index, rounded up), any other dim as this rank's tensor has it (a
    per-channel scale's trailing 1, act-order groups kept whole)."""
    shape = list(local)
    if lay.output_dim is not None:
        shape[lay.output_dim] = -(-full[0] // lay.output_unit)
    if lay.input_dim is not None:
        shape[lay.input_dim] = -(-full[1] // lay.input_unit)
    return tuple(shape)


class MoEGate(nn.Module):
    """The router: ``weight [E, H]`` (replicated, never quantized) and DeepSeek-V3's ``e_score_correction_bias``."""

    def __init__(
        self, hidden_size: int, routing: RoutingConfig, ctx: ModelContext, correction_bias: bool = False,
        fp32: bool = False,
    ) -> None:
        super().__init__()
        self.routing = routing
        self.fp32 = fp32  # DeepSeek computes router logits in fp32
        self.weight = nn.Parameter(torch.empty(routing.num_experts, hidden_size, dtype=ctx.dtype), requires_grad=False)
        self.e_score_correction_bias = (
            nn.Parameter(torch.empty(routing.num_experts, dtype=torch.float32), requires_grad=False)
            if correction_bias else None
        )

    def forward(self, x: torch.Tensor) -> TopKOutput:
        logits = F.linear(x.float(), self.weight.float()) if self.fp32 else F.linear(x, self.weight)
        return select_experts(logits, self.routing, self.e_score_correction_bias)


class ExpertWeights:
    """Takes the per-expert tensors out of a checkpoint stream and loads them into the fused expert parameters.

    NOTE: a fused parameter counts as loaded only once every expert's every shard arrived; ``finish`` names what
    is missing otherwise.
    """

    def __init__(self, model: nn.Module, mapping: Sequence[ExpertParam]) -> None:
        self.params = dict(model.named_parameters())
        self.mapping = {m.source: m for m in mapping}
        self.seen: dict[str, set[tuple[int, str]]] = {}

    def take(self, name: str, tensor: torch.Tensor) -> bool:
        """Loads ``tensor`` when it is an expert's; returns whether it was."""
        match = _EXPERT_NAME.match(name)
        if match is None or match["proj"] not in self.mapping:
            return False
        m = self.mapping[match["proj"]]
        target = f"{match['prefix']}.{m.target}_{match['suffix']}"
        if target not in self.params:
            raise ValueError(f"unexpected tensor {name!r} in the checkpoint: the model has no parameter {target!r}")
        shard: Any = (int(match["expert"]), m.shard)
        try:
            self.params[target].weight_loader(self.params[target], tensor, shard)  # type: ignore[attr-defined]
        except (ValueError, IndexError) as exc:
            raise ValueError(f"tensor {name!r}: {exc}") from exc
        self.seen.setdefault(target, set()).add(shard)
        return True

    def finish(self) -> set[str]:
        """The fused parameters fully loaded; raises naming the first missing tensors of a partial one."""
        for target, shards in self.seen.items():
            layer, param = target.rsplit(".", 1)
            group, suffix = param.split("_", 1)
            want = {
                (e, m.shard) for e in range(getattr(self.params[target], "num_experts", self.params[target].shape[0]))
                for m in self.mapping.values() if m.target == group
            }
            missing = sorted(want - shards)
            if missing:
                src = {m.shard: m.source for m in self.mapping.values()}
                names = ", ".join(f"{layer}.{e}.{src[s]}.{suffix}" for e, s in missing[:8])
                raise ValueError(f"missing tensor(s) {names} in the checkpoint ({len(missing)} in all)")
        return set(self.seen)
