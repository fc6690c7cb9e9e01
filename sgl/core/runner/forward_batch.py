"""ForwardBatch: the device-side view of one step, what the model graph and attention backends read."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from sgl.core.attention.store_target import KVStoreTarget
    from sgl.core.memory.kv_pool import KVPool
    from sgl.core.memory.req_to_token import ReqToTokenPool


class BatchAttention(Protocol):
    """What a layer calls on the batch's attention backend (``attention.base.AttentionBackend`` implements it).

    NOTE: a protocol here, not the backend class, so the backend contract and this batch do not import each other."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any, forward_batch: ForwardBatch,
                save_kv_cache: bool = True) -> torch.Tensor: ...

    def kv_store_target(self, layer: Any, forward_batch: ForwardBatch) -> KVStoreTarget | None: ...


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # new tokens (prefill or a chunk of one), possibly over a cached prefix
    DECODE = "decode"  # exactly one new token per request
    MIXED = "mixed"  # extends and decodes in one batch; treated as EXTEND with extend length 1 for the decodes
    IDLE = "idle"  # no tokens on this rank (keeps tensor-parallel ranks in step)
    # NOTE: speculative verification: per request, its last token and its k draft tokens (k >= 0) extend its KV,
    # causal among themselves; logits come back for every position. Backends run it as an extend over the prefix.
    TARGET_VERIFY = "target_verify"

    @property
    def is_extend(self) -> bool:
        return self in (ForwardMode.EXTEND, ForwardMode.MIXED, ForwardMode.TARGET_VERIFY)

    @property
    def is_verify(self) -> bool:
        return self is ForwardMode.TARGET_VERIFY

    @property
    def is_decode(self) -> bool:
        return self is ForwardMode.DECODE


@dataclass
class ForwardBatch:
    """Tensors for one forward. T = total new tokens, B = requests.

    NOTE: for request i, its new tokens occupy ``input_ids[extend_start_loc[i] : extend_start_loc[i] + extend_seq_lens[i]]``
    and its KV slots are ``req_to_token[req_pool_indices[i], :seq_lens[i]]``, of which the last ``extend_seq_lens[i]``
    are ``out_cache_loc`` for those tokens (the backend writes them before attending). In DECODE every extend length
    is 1 and ``extend_*`` fields may be None.
    """

    forward_mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    req_pool_indices: torch.Tensor  # [B] int64
    seq_lens: torch.Tensor  # [B] int64, prefix + new tokens
    out_cache_loc: torch.Tensor  # [T] int64
    seq_lens_cpu: list[int]
    req_to_token_pool: ReqToTokenPool
    kv_pool: KVPool
    attn_backend: BatchAttention
    extend_prefix_lens: torch.Tensor | None = None  # [B] int64
    extend_seq_lens: torch.Tensor | None = None  # [B] int64
    extend_start_loc: torch.Tensor | None = None  # [B] int64
    extend_prefix_lens_cpu: list[int] | None = None
    extend_seq_lens_cpu: list[int] | None = None
    attn_metadata: Any = None  # owned by attn_backend.init_forward_metadata
    # NOTE: the model contract's hidden-state capture: layer L means the residual stream entering decoder layer L
    # (num_layers: leaving the last, before the final norm). The model stores each as ``captured_hidden[L]``
    # ([T, hidden]). Speculative drafts (EAGLE-3) read a target's middle layers this way.
    capture_hidden_layers: tuple[int, ...] = ()
    captured_hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    # NOTE: speculative tree drafts: per request, bool [n, n] over its n new tokens (True: may attend), replacing the
    # causal order among them; every new token still sees the whole prefix. None: causal. Backends without it refuse.
    tree_masks: list[torch.Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])
