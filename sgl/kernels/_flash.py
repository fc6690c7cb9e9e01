"""The online-softmax step shared by the attention kernels: fold one block of keys into a running (max, sum, acc)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_block(q, k, v, s_mask, m, l, acc, scale_log2, PRECISION: tl.constexpr):
    """q [M, D] x k [N, D] -> scores in base 2 (scaled by log2 e, so exp2 replaces exp); masked scores are -inf.

    K and V are cast to q's dtype, so a KV cache stored narrower than the activations (fp8) still meets a
    matching tl.dot; accumulation is fp32 throughout. PRECISION is "ieee" for fp32 activations (no silent tf32).
    """
    s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION) * scale_log2
    s = tl.where(s_mask, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    # NOTE: a query row past its request's extend length may see no key in a block; keep its max finite (no NaN).
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION)
    return m_new, l, acc
