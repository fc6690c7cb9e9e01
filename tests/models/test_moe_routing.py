"""Routing equals each family's Hugging Face router: softmax top-k, renormalised or not, and DeepSeek's grouped top-k
(V2's group-limited greedy; V3's sigmoid scores ranked with the correction bias, weighed without it)."""

from __future__ import annotations

import pytest
import torch

from sgl.core.ops.moe import fused_moe
from sgl.core.ops.moe_routing import RoutingConfig, select_experts
from tests.models.tiny_moe import moe_config

pytest.importorskip("transformers")


def _same_choice(ours: tuple[torch.Tensor, torch.Tensor], weights: torch.Tensor, ids: torch.Tensor) -> None:
    order_ours, order_hf = ours[1].sort(dim=-1).indices, ids.sort(dim=-1).indices
    assert torch.equal(ours[1].gather(1, order_ours), ids.gather(1, order_hf))
    torch.testing.assert_close(ours[0].gather(1, order_ours), weights.float().gather(1, order_hf))


def test_deepseek_v3_grouped_sigmoid_topk_with_correction_bias_equals_hf() -> None:
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    config = moe_config("deepseek_v3", n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4)
    router = DeepseekV3TopkRouter(config)
    g = torch.Generator().manual_seed(0)
    router.weight.data = torch.randn(router.weight.shape, generator=g)
    router.e_score_correction_bias.copy_(torch.randn(16, generator=g))
    x = torch.randn(64, config.hidden_size, generator=g)
    _, weights, ids = router(x)
    cfg = RoutingConfig(top_k=4, num_experts=16, scoring="sigmoid", renormalize=True, num_groups=4, topk_groups=2,
                        group_score="top2_sum", scale=config.routed_scaling_factor)
    ours = select_experts(x @ router.weight.T, cfg, router.e_score_correction_bias)
    _same_choice(ours, weights, ids)


def test_deepseek_v2_group_limited_greedy_equals_hf() -> None:
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter

    config = moe_config("deepseek_v2", n_routed_experts=16, n_group=4, topk_group=1, num_experts_per_tok=3)
    router = DeepseekV2TopkRouter(config)
    g = torch.Generator().manual_seed(1)
    router.weight.data = torch.randn(router.weight.shape, generator=g)
    x = torch.randn(64, config.hidden_size, generator=g)
    _, weights, ids = router(x)
    cfg = RoutingConfig(top_k=3, num_experts=16, num_groups=4, topk_groups=1, scale=config.routed_scaling_factor)
    ours = select_experts(x @ router.weight.T, cfg)
    _same_choice(ours, weights, ids)
    assert (ours.ids // 4 == ours.ids[:, :1] // 4).all()  # one group kept: all choices from it


def test_sigmoid_groups_never_pick_a_dropped_group_when_kept_scores_are_negative() -> None:
    """With a negative correction bias every kept score is < 0; dropped experts must still lose (masked to -inf)."""
    logits = torch.zeros(1, 4)  # sigmoid 0.5 everywhere: the bias decides; every biased score is negative
    cfg = RoutingConfig(top_k=2, num_experts=4, scoring="sigmoid", num_groups=2, topk_groups=1, group_score="max")
    bias = torch.tensor([-0.6, -0.7, -1.0, -1.1])
    out = select_experts(logits, cfg, bias)
    assert sorted(out.ids[0].tolist()) == [0, 1]
    torch.testing.assert_close(out.weights, torch.full((1, 2), 0.5))  # weighed by the bare score


def test_renormalised_weights_sum_to_one_and_scale_applies_after() -> None:
    logits = torch.randn(10, 8, generator=torch.Generator().manual_seed(2))
    out = select_experts(logits, RoutingConfig(top_k=3, num_experts=8, renormalize=True, scale=2.5))
    torch.testing.assert_close(out.weights.sum(-1), torch.full((10,), 2.5))


def test_bad_routing_configs_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="unknown expert scoring 'relu'"):
        RoutingConfig(top_k=1, num_experts=4, scoring="relu")
    with pytest.raises(ValueError, match="groups must divide"):
        RoutingConfig(top_k=1, num_experts=6, num_groups=4)


def test_reference_moe_equals_a_dense_mixture_and_skips_foreign_experts() -> None:
    """fused_moe = sum_k w * expert(x) computed densely; ids outside [0, E) (other ranks' experts) add nothing."""
    g = torch.Generator().manual_seed(3)
    t, h, i, e = 7, 16, 8, 4
    x, w13 = torch.randn(t, h, generator=g), torch.randn(e, 2 * i, h, generator=g)
    w2 = torch.randn(e, h, i, generator=g)
    ids = torch.tensor([[0, 2], [1, 3], [3, 0], [2, 2], [1, 0], [0, 1], [3, -1]])
    weights = torch.rand(t, 2, generator=g)
    expect = torch.zeros(t, h)
    for r in range(t):
        for k in range(2):
            ex = int(ids[r, k])
            if ex >= 0:
                gate, up = (w13[ex] @ x[r]).chunk(2)
                expect[r] += weights[r, k] * (w2[ex] @ (torch.nn.functional.silu(gate) * up))
    torch.testing.assert_close(fused_moe(x, w13, w2, weights, ids), expect, atol=1e-4, rtol=1e-4)
