"""Vocab-parallel embedding and LM head: the vocabulary is split over tensor-parallel ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from sgl.core.model.context import ModelContext


class VocabParallelEmbedding(nn.Module):
    """Rank r holds rows ``[r * per_rank, (r+1) * per_rank)`` of the (padded) vocabulary.

    NOTE: the vocabulary is padded up to a multiple of ``tp_size``; padded rows are zero and never looked up, and
    compute_logits drops their columns.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, ctx: ModelContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.tp_rank = ctx.parallel.tp_rank
        self.tp_size = ctx.parallel.tp_size
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.per_rank = -(-num_embeddings // self.tp_size)
        self.vocab_start = self.tp_rank * self.per_rank
        self.vocab_end = min(self.vocab_start + self.per_rank, num_embeddings)
        self.weight = nn.Parameter(torch.empty(self.per_rank, embedding_dim, dtype=ctx.dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        if tuple(loaded_weight.shape) != (self.num_embeddings, self.embedding_dim):
            raise ValueError(
                f"shape mismatch: checkpoint {tuple(loaded_weight.shape)} vs vocabulary "
                f"({self.num_embeddings}, {self.embedding_dim})"
            )
        n = self.vocab_end - self.vocab_start
        param.data[:n].copy_(loaded_weight[self.vocab_start : self.vocab_end])
        param.data[n:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        mine = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local = torch.where(mine, input_ids - self.vocab_start, torch.zeros_like(input_ids))
        out = F.embedding(local, self.weight) * mine.unsqueeze(-1).to(self.weight.dtype)
        return self.ctx.parallel.comm.all_reduce(out)

    def extra_repr(self) -> str:
        return f"vocab={self.num_embeddings}, dim={self.embedding_dim}, rows=[{self.vocab_start}, {self.vocab_end})"


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection; with tied embeddings it holds the embedding's own Parameter (one tensor, two uses)."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, ctx: ModelContext, tie_to: VocabParallelEmbedding | None = None
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, ctx)
        if tie_to is not None:
            if tie_to.weight.shape != self.weight.shape:
                raise ValueError(f"cannot tie lm_head {tuple(self.weight.shape)} to {tuple(tie_to.weight.shape)}")
            self.weight = tie_to.weight
        self.tied = tie_to is not None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead is not an embedding; call compute_logits(hidden)")

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, dim] -> fp32 logits [N, vocab], gathered over the vocab shards."""
        logits = F.linear(hidden, self.weight)
        if self.tp_size > 1:
            logits = self.ctx.parallel.comm.all_gather(logits, dim=-1)
        return logits[..., : self.num_embeddings].float()
