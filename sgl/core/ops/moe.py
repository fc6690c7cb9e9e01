"""The reference MoE op: every token through its top-k experts, weighted and summed.

Weight layout (SGLang's and Hugging Face's fused one): ``w13 [E, 2 * I, H]`` holds each expert's gate rows then its up
rows, ``w2 [E, H, I]`` its down projection. It loops over the experts that were hit, so it is slow but obviously
right: the CPU path and the oracle the fused Triton kernel is tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sgl.core.ops import reference

ACTIVATIONS = {"silu": reference.silu_and_mul, "gelu_tanh": reference.gelu_tanh_and_mul}


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    quantize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    hidden_dtype: torch.dtype | None = None,
    quantize_down: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """x [T, H] -> [T, H] = sum_k weights[t, k] * down_e(act(gate_e(x)) * up_e(x)) with e = ids[t, k].

    ``quantize`` (W8A8 expert layouts): what each GEMM's input rows become first (rounded through fp8 per token);
    ``hidden_dtype``: the dtype the gate-up output is rounded to before the activation (the model's, as a fused
    kernel stores it), when x itself is widened for the reference's arithmetic; ``quantize_down``: the down GEMM's
    own input rounding where it differs from the gate-up's (a static input scale per GEMM), else ``quantize``.

    NOTE: ids outside [0, E) are skipped (a rank's non-local experts under expert parallelism are marked that way).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unsupported MoE activation {activation!r}; supported: {', '.join(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float32, device=x.device)
    flat_ids = topk_ids.reshape(-1)
    token_of = torch.arange(x.shape[0], device=x.device).repeat_interleave(topk_ids.shape[1])
    flat_w = topk_weights.reshape(-1).float()
    quantize_down = quantize_down or quantize
    for e in torch.unique(flat_ids).tolist():
        if not 0 <= e < w13.shape[0]:
            continue
        hit = (flat_ids == e).nonzero().squeeze(1)
        rows = token_of[hit]
        rows_in = x[rows] if quantize is None else quantize(x[rows])
        gate_up = torch.nn.functional.linear(rows_in, w13[e])
        if hidden_dtype is not None:
            gate_up = gate_up.to(hidden_dtype)
        h = act(gate_up).to(w2.dtype)
        y = torch.nn.functional.linear(h if quantize_down is None else quantize_down(h), w2[e])
        out.index_add_(0, rows, y.float() * flat_w[hit, None])
    return out.to(x.dtype)


def experts_hit(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hit, local_ids)``: the experts in [0, E) that ``topk_ids`` names, ascending, and the ids renumbered into
    that list (ids outside [0, E) become -1). A reference over packed experts dequantizes only ``hit`` and runs
    ``fused_moe`` with ``local_ids``."""
    ids = topk_ids.long()
    inside = (ids >= 0) & (ids < num_experts)
    hit = torch.unique(ids[inside])
    local = torch.full((num_experts,), -1, dtype=torch.long, device=ids.device)
    local[hit] = torch.arange(hit.numel(), device=ids.device)
    return hit, torch.where(inside, local[ids.clamp(0, num_experts - 1)], -1)
