"""The fused Triton MoE equals the reference op (sgl.core.ops.moe.fused_moe), and its token sort keeps every
(token, expert) pair exactly once in expert-pure blocks."""

from __future__ import annotations

import pytest
import torch

from sgl.core.ops import moe as reference
from sgl.kernels.fused_moe import align_tokens, fused_moe

TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 3e-2)}


def _case(t: int, e: int, k: int, h: int, i: int, dtype: torch.dtype, device: torch.device, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g).to(dtype).to(device)
    w13 = (torch.randn(e, 2 * i, h, generator=g) / h**0.5).to(dtype).to(device)
    w2 = (torch.randn(e, h, i, generator=g) / i**0.5).to(dtype).to(device)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(device)
    weights = torch.rand(t, k, generator=g).to(device)
    return x, w13, w2, weights, ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t,e,k", [(1, 8, 2), (7, 4, 3), (40, 8, 2)])
def test_fused_moe_matches_reference(t: int, e: int, k: int, dtype: torch.dtype, device: torch.device) -> None:
    """H and I are not powers of two, so the n and k tile masks are exercised."""
    x, w13, w2, weights, ids = _case(t, e, k, 48, 40, dtype, device, seed=t)
    out = fused_moe(x, w13, w2, weights, ids)
    ref = reference.fused_moe(x.float(), w13.float(), w2.float(), weights, ids)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype][0], rtol=TOL[dtype][1])


def test_pairs_of_other_ranks_experts_add_nothing(device: torch.device) -> None:
    """Ids outside [0, E) (expert parallel's foreign experts) are skipped, as the reference skips them."""
    x, w13, w2, weights, ids = _case(9, 4, 2, 32, 16, torch.float32, device, seed=5)
    ids[::2, 1] = -1
    ids[1, 0] = 4
    torch.testing.assert_close(fused_moe(x, w13, w2, weights, ids), reference.fused_moe(x, w13, w2, weights, ids),
                               atol=1e-4, rtol=1e-4)


def test_align_tokens_blocks_are_expert_pure_and_hold_each_pair_once(device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (23, 3), generator=g).to(device)
    ids[0, 0] = -1
    a = align_tokens(ids, 6, 8)
    total = int(a.padded_total)
    pairs = a.sorted_pairs[:total].long().cpu()
    real = pairs[pairs < ids.numel()]
    expected = [p for p in range(ids.numel()) if p != 0]
    assert sorted(real.tolist()) == expected
    flat = ids.reshape(-1).cpu()
    experts = a.block_experts.cpu()
    assert total % 8 == 0 and (experts[total // 8:] == -1).all()
    for b in range(total // 8):
        block = pairs[b * 8:(b + 1) * 8]
        block = block[block < ids.numel()]
        assert (flat[block] == experts[b]).all()


def test_empty_batch_gives_empty_output(device: torch.device) -> None:
    _, w13, w2, _, _ = _case(1, 4, 2, 32, 16, torch.float32, device, seed=0)
    x, ids = torch.empty(0, 32, device=device), torch.empty(0, 2, dtype=torch.int64, device=device)
    assert fused_moe(x, w13, w2, torch.empty(0, 2, device=device), ids).shape == (0, 32)
