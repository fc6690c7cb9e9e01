"""AscendAttnBackend: paged attention through torch_npu's fused inference attention, the torch reference elsewhere.

Per request, the reference backend gathers the request's K/V slots from the pool; this backend hands them to
``torch_npu.npu_fused_infer_attention_score`` in its "BSH" layout (the op takes its incremental path for one query
token, its prompt path for many, with the cached prefix shifting the causal mask). Where this torch_npu lacks the op,
or q is not fp16/bf16 (the op's dtypes), the reference attends, and the log says so once.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import torch

from sgl.core.attention.base import AttentionLayerInfo
from sgl.core.attention.torch_native import TorchNativeAttnBackend
from sgl.plugins.ascend.runtime import torch_npu_op

if TYPE_CHECKING:
    from sgl.core.runner.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)

FUSED_OP = "npu_fused_infer_attention_score"
FUSED_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _log_once(message: str) -> None:
    logger.warning(message)


def scale_keyword(op: Any) -> str:
    """The op's keyword for the softmax scale: ``scale`` in current torch_npu, ``scale_value`` in older releases.

    NOTE: read from the op's registered schema where it has one; the current name otherwise.
    """
    schema = getattr(getattr(op, "default", None), "_schema", None) or getattr(op, "_schema", None)
    names = {a.name for a in getattr(schema, "arguments", ())}
    return "scale_value" if "scale_value" in names else "scale"


class AscendAttnBackend(TorchNativeAttnBackend):
    """The reference backend's bookkeeping (gather per request, write K/V at out_cache_loc), torch_npu's kernel."""

    def __init__(self, runner: Any = None) -> None:
        super().__init__(runner)
        self._op = torch_npu_op(FUSED_OP)
        self._scale_kw = scale_keyword(self._op) if self._op is not None else "scale"
        if self._op is None:
            _log_once(f"ascend: torch_npu has no {FUSED_OP}: attention runs as the torch reference")

    def _attend(
        self, q: torch.Tensor, slots: torch.Tensor, prefix_len: int, layer: AttentionLayerInfo, fb: ForwardBatch,
        tree: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if tree is not None or self._op is None or q.dtype not in FUSED_DTYPES:
            if self._op is not None and tree is None:
                _log_once(f"ascend: {FUSED_OP} takes fp16/bf16, q is {q.dtype}: attention runs as the torch reference")
            return super()._attend(q, slots, prefix_len, layer, fb, tree)  # NOTE: tree masks: the reference's
        n, s = q.shape[0], slots.shape[0]
        # NOTE: an fp8 pool is upcast here, as the reference does; the op reads fp16/bf16 keys.
        k = fb.kv_pool.get_key_buffer(layer.layer_id)[slots].to(q.dtype)  # [s, KVH, D]
        v = fb.kv_pool.get_value_buffer(layer.layer_id)[slots].to(q.dtype)
        mask = None
        if n > 1:
            # NOTE: True masks a key out (the op's convention): token j sees keys [0, prefix_len + j].
            rows = torch.arange(n, device=q.device).unsqueeze(1) + prefix_len
            mask = (torch.arange(s, device=q.device).unsqueeze(0) > rows)[None, None]  # [1, 1, n, s]
        out, _lse = self._op(
            q.reshape(1, n, -1), k.reshape(1, s, -1), v.reshape(1, s, -1),
            atten_mask=mask, num_heads=layer.num_heads, num_key_value_heads=layer.num_kv_heads,
            input_layout="BSH", **{self._scale_kw: layer.scaling},
        )
        return out.view(n, layer.num_heads, -1)
