"""Linear layers with a pluggable GEMM (LinearMethod) and tensor-parallel sharding.

Each layer holds only this rank's shard and knows how to cut it out of the full Hugging Face tensor
(``weight_loader``), so tensor parallelism is a matter of starting more processes, never of rewriting a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
from torch import nn

# NOTE: the GEMM contract lives in a leaf module (context.py needs it, and this module needs the context); it is
# re-exported here because a layer's users reach for it beside the layers.
from sgl.core.model.linear_method import (
    GatedActivation,
    LinearMethod,
    ShardLayout,
    UnquantizedLinearMethod,
    shard_layout,
)
from sgl.core.model.linear_method import narrow_features as _narrow

__all__ = [
    "ColumnParallelLinear", "GatedActivation", "LinearBase", "LinearMethod", "MergedColumnParallelLinear",
    "OutputAdapter", "OutputSlice", "QKVParallelLinear", "ReplicatedLinear", "RowParallelLinear", "ShardLayout",
    "UnquantizedLinearMethod",
]

if TYPE_CHECKING:
    from sgl.core.model.context import ModelContext


def _copy_checked(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"shape mismatch: checkpoint shard {tuple(src.shape)} vs parameter {tuple(dst.shape)}")
    dst.copy_(src)


def _copy_per_shard(param: nn.Parameter, loaded: torch.Tensor, index: int | None) -> None:
    """A per-slice scalar (``ShardLayout.per_shard``): into entry ``index``, or every entry for a fused tensor."""
    if loaded.numel() != 1:
        raise ValueError(f"shape mismatch: checkpoint {tuple(loaded.shape)} vs one scalar per slice")
    if index is None:
        param.data.fill_(loaded.reshape(()).item())
    else:
        param.data[index] = loaded.reshape(())


def _divide(n: int, d: int, what: str) -> int:
    if n % d:
        raise ValueError(f"{what} ({n}) is not divisible by the tensor-parallel size ({d})")
    return n // d


class OutputSlice(NamedTuple):
    """One of the matrices a layer's output stacks (q, k, v; gate, up), as laid out on this rank."""

    shard_id: Any  # the id its weight_loader takes (None for a layer of one matrix)
    offset: int  # first output column on this rank
    size: int  # output columns on this rank


class OutputAdapter(Protocol):
    """Adds something to a layer's GEMM output, per batch row (LoRA's low-rank updates).

    NOTE: called on this rank's shard before any reduce, so a row-parallel layer's partial delta is summed with its
    partial product; ``x`` is the GEMM's input and ``out`` may be updated in place."""

    def __call__(self, layer: LinearBase, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor: ...


class LinearBase(nn.Module):
    """Shared plumbing: the method creates ``weight``/``bias`` and each parameter points at ``weight_loader``.

    ``adapter`` is the one seam through which a feature adds to the output after the GEMM (None: nothing added).

    NOTE: loaders shard through each parameter's ``ShardLayout``, so a quantized layout (block scales, packed int4,
    transposed AWQ/GPTQ tensors) loads through the same code as a dense weight. A parameter the method already gave
    its own ``weight_loader`` keeps it (it may call the layer's).
    """

    bias: nn.Parameter | None  # created by the LinearMethod (None without a bias); quantized methods add more
    adapter: OutputAdapter | None = None

    def __init__(self, in_features: int, out_features: int, bias: bool, ctx: ModelContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.in_features = in_features  # on this rank
        self.out_features = out_features  # on this rank
        self.tp_rank = ctx.parallel.tp_rank
        self.tp_size = ctx.parallel.tp_size
        self.output_partition_sizes = self._partition_sizes(out_features)  # this rank's rows of each merged slice
        self.linear_method = ctx.linear_method
        self.linear_method.create_weights(self, in_features, out_features, bias, ctx.dtype)
        for p in self.parameters(recurse=False):
            if not hasattr(p, "weight_loader"):
                p.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def _partition_sizes(self, out_features: int) -> list[int]:
        return [out_features]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, tp={self.tp_rank}/{self.tp_size}"

    def output_slices(self) -> list[OutputSlice]:
        """The matrices this layer's output stacks, on this rank; merged layers list each."""
        return [OutputSlice(None, 0, self.out_features)]

    def _gemm(self, x: torch.Tensor, bias: torch.Tensor | None, act: GatedActivation | None = None) -> torch.Tensor:
        """The GEMM of x, or with ``act`` of ``act(gate) * up`` for x laid out ``[gate | up]``."""
        if act is not None:
            if self.adapter is None:
                return self.linear_method.apply_gated(self, x, act, bias)
            x = act.op(x)  # NOTE: an adapter reads the GEMM's input, so the activation must exist as a tensor
        out = self.linear_method.apply(self, x, bias)
        return out if self.adapter is None else self.adapter(self, x, out)


class ReplicatedLinear(LinearBase):
    """The full matrix on every rank."""

    def __init__(self, in_features: int, out_features: int, bias: bool, ctx: ModelContext) -> None:
        super().__init__(in_features, out_features, bias, ctx)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        if shard_layout(param).per_shard:
            _copy_per_shard(param, loaded_weight, 0)
            return
        _copy_checked(param.data, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._gemm(x, self.bias)


class ColumnParallelLinear(LinearBase):
    """Output features split over ranks: rank r holds rows ``[r * out/tp, (r+1) * out/tp)`` of the weight."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, ctx: ModelContext, gather_output: bool = False
    ) -> None:
        self.full_out_features = out_features
        super().__init__(in_features, _divide(out_features, ctx.parallel.tp_size, "output features"), bias, ctx)
        self.gather_output = gather_output

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        lay = shard_layout(param)
        if lay.per_shard:
            _copy_per_shard(param, loaded_weight, 0)
            return
        if self.tp_size > 1:
            n = self.out_features
            loaded_weight = _narrow(loaded_weight, lay.output_dim, self.tp_rank * n, n, lay.output_unit)
        _copy_checked(param.data, loaded_weight)

    def _load_slice(
        self, param: nn.Parameter, loaded: torch.Tensor, index: int, full: int, dst_offset: int, src_offset: int
    ) -> None:
        """Slice ``index`` of a merged layer: checkpoint rows ``[src_offset, +local)`` of a ``full``-row tensor go to
        this rank's rows ``[dst_offset, +local)`` (in features; the layout converts to indices)."""
        lay = shard_layout(param)
        if lay.per_shard:
            _copy_per_shard(param, loaded, index)
            return
        if lay.output_dim is None:  # e.g. GPTQ's g_idx: the slices share their input
            _copy_checked(param.data, loaded)
            return
        if loaded.shape[lay.output_dim] != -(-full // lay.output_unit):
            raise ValueError(
                f"shape mismatch: checkpoint slice {index} {tuple(loaded.shape)}, expected {full} output features "
                f"along dim {lay.output_dim} (block {lay.output_unit})"
            )
        local = self.output_partition_sizes[index]
        dst = _narrow(param.data, lay.output_dim, dst_offset, local, lay.output_unit)
        _copy_checked(dst, _narrow(loaded, lay.output_dim, src_offset, local, lay.output_unit))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._gemm(x, self.bias)
        if self.gather_output and self.tp_size > 1:
            out = self.ctx.parallel.comm.all_gather(out, dim=-1)
        return out


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel matrices stacked on the output dim (gate | up); each is split over ranks on its own.

    NOTE: rank r's weight is [gate shard r ; up shard r], so an activation that splits its input in halves
    (silu_and_mul) works on every rank without a gather.
    """

    def __init__(
        self, in_features: int, output_sizes: Sequence[int], bias: bool, ctx: ModelContext,
        gather_output: bool = False,
    ) -> None:
        self.output_sizes = [int(s) for s in output_sizes]
        for s in self.output_sizes:
            _divide(s, ctx.parallel.tp_size, "a merged output size")
        super().__init__(in_features, sum(self.output_sizes), bias, ctx, gather_output)

    def _partition_sizes(self, out_features: int) -> list[int]:
        return [s // self.tp_size for s in self.output_sizes]

    def output_slices(self) -> list[OutputSlice]:
        local = [s // self.tp_size for s in self.output_sizes]
        return [OutputSlice(i, sum(local[:i]), n) for i, n in enumerate(local)]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        lay = shard_layout(param)
        if shard_id is None:  # a checkpoint that already stores the merged matrix
            if lay.per_shard:
                _copy_per_shard(param, loaded_weight, None)
                return
            for i, size in enumerate(self.output_sizes):
                offset = sum(self.output_sizes[:i])
                self.weight_loader(param, _narrow(loaded_weight, lay.output_dim, offset, size, lay.output_unit), i)
            return
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"shard id {shard_id!r} is not in [0, {len(self.output_sizes)})")
        local = self.output_partition_sizes[shard_id]
        offset = sum(self.output_partition_sizes[:shard_id])
        self._load_slice(param, loaded_weight, shard_id, self.output_sizes[shard_id], offset, self.tp_rank * local)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one GEMM; heads split over ranks.

    NOTE: when tp_size > total kv heads, each kv head is replicated on ``tp_size / total_kv_heads`` ranks, and rank
    r holds kv head ``r // replicas``; q heads are always split evenly.
    """

    def __init__(
        self, hidden_size: int, head_dim: int, total_num_heads: int, total_num_kv_heads: int, bias: bool,
        ctx: ModelContext,
    ) -> None:
        tp = ctx.parallel.tp_size
        self.head_dim = head_dim
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = total_num_kv_heads
        self.num_heads = _divide(total_num_heads, tp, "attention heads")
        if tp >= total_num_kv_heads:
            self.num_kv_heads = 1
            self.kv_replicas = _divide(tp, total_num_kv_heads, "tp size over kv heads")
        else:
            self.num_kv_heads = _divide(total_num_kv_heads, tp, "kv heads")
            self.kv_replicas = 1
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        full_out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden_size, full_out, bias, ctx)

    def output_slices(self) -> list[OutputSlice]:
        q, kv = self.q_size, self.kv_size
        return [OutputSlice("q", 0, q), OutputSlice("k", q, kv), OutputSlice("v", q + kv, kv)]

    def _full_sizes(self) -> dict[str, int]:
        kv = self.total_num_kv_heads * self.head_dim
        return {"q": self.total_num_heads * self.head_dim, "k": kv, "v": kv}

    def _partition_sizes(self, out_features: int) -> list[int]:
        return [self.q_size, self.kv_size, self.kv_size]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        full = self._full_sizes()
        lay = shard_layout(param)
        if shard_id is None:  # a fused checkpoint tensor: [q; k; v]
            if lay.per_shard:
                _copy_per_shard(param, loaded_weight, None)
                return
            offset = 0
            for sid in ("q", "k", "v"):
                self.weight_loader(param, _narrow(loaded_weight, lay.output_dim, offset, full[sid], lay.output_unit), sid)
                offset += full[sid]
            return
        if shard_id not in full:
            raise ValueError(f"shard id {shard_id!r} is not one of 'q', 'k', 'v'")
        if shard_id == "q":
            dst_offset, size, src_index = 0, self.q_size, self.tp_rank
        else:
            dst_offset = self.q_size + (self.kv_size if shard_id == "v" else 0)
            size, src_index = self.kv_size, self.tp_rank // self.kv_replicas
        index = ("q", "k", "v").index(shard_id)
        self._load_slice(param, loaded_weight, index, full[shard_id], dst_offset, src_index * size)


class RowParallelLinear(LinearBase):
    """Input features split over ranks; partial products are summed with an all_reduce, then the bias is added once."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, ctx: ModelContext,
        input_is_parallel: bool = True, reduce_results: bool = True,
    ) -> None:
        self.full_in_features = in_features
        super().__init__(_divide(in_features, ctx.parallel.tp_size, "input features"), out_features, bias, ctx)
        self.input_is_parallel = input_is_parallel
        self.reduce_results = reduce_results

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        lay = shard_layout(param)
        if lay.per_shard:
            _copy_per_shard(param, loaded_weight, 0)
            return
        if self.tp_size > 1:  # NOTE: the bias (input_dim None) is not split
            n = self.in_features
            loaded_weight = _narrow(loaded_weight, lay.input_dim, self.tp_rank * n, n, lay.input_unit)
        _copy_checked(param.data, loaded_weight)

    def forward(self, x: torch.Tensor, act: GatedActivation | None = None) -> torch.Tensor:
        """x [T, in], or with ``act`` x [T, 2 * in] laid out ``[gate | up]``: the layer applies ``act(gate) * up``
        first, fused into its GEMM where the linear method can (an MLP's down projection)."""
        if not self.input_is_parallel and self.tp_size > 1:
            if act is not None:
                raise ValueError("a gated input must already be this rank's shard (input_is_parallel)")
            x = x.narrow(-1, self.tp_rank * self.in_features, self.in_features)
        if self.tp_size == 1:
            return self._gemm(x, self.bias, act)
        out = self._gemm(x, None, act)
        if self.reduce_results:
            out = self.ctx.parallel.comm.all_reduce(out)
        # NOTE: unreduced partial sums carry the bias on rank 0 only, so a later reduce adds it exactly once.
        if self.bias is not None and (self.reduce_results or self.tp_rank == 0):
            out = out + self.bias
        return out
