"""TARGET_VERIFY on the attention backends: each request's last token and its drafts extend its KV, causal among
themselves; Triton and the torch reference agree, and one verify forward equals the decode steps it replaces."""

from __future__ import annotations

import copy

import torch
from kernel_oracle import Paged, paged_attention_oracle
from test_triton_backend import HEAD_DIM, HEADS, KV_HEADS, Layer, _qkv

from sgl.core.attention.torch_native import TorchNativeAttnBackend
from sgl.core.runner.forward_batch import ForwardMode
from sgl.kernels.attention_backend import ExtendMetadata, TritonAttnBackend


def _verify_both(
    reqs: list[int], prefix: list[int], ext: list[int], device: torch.device, trees: list | None = None,
) -> tuple[Paged, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One TARGET_VERIFY batch through Triton and the torch reference over identical pools: (Triton's pool, q,
    Triton's output, the reference's)."""
    ours = Paged.make(KV_HEADS, HEAD_DIM, torch.float32, device)
    for r, p in zip(reqs, prefix):
        ours.fill_prefix(r, p)
    theirs = copy.deepcopy(ours)
    triton_backend, native = TritonAttnBackend(None), TorchNativeAttnBackend(None)
    q, k, v = _qkv(sum(ext), torch.float32, device)
    fb_ours = ours.batch(reqs, prefix, ext, ForwardMode.TARGET_VERIFY, triton_backend)
    fb_theirs = theirs.batch(reqs, prefix, ext, ForwardMode.TARGET_VERIFY, native)
    fb_ours.tree_masks = fb_theirs.tree_masks = trees
    triton_backend.init_forward_metadata(fb_ours)
    native.init_forward_metadata(fb_theirs)
    assert isinstance(fb_ours.attn_metadata, ExtendMetadata)
    return ours, q, triton_backend.forward(q, k, v, Layer(), fb_ours), native.forward(q, k, v, Layer(), fb_theirs)


def test_verify_batch_matches_torch_native_and_the_oracle(device: torch.device) -> None:
    torch.manual_seed(5)
    reqs, prefix, ext = [0, 1, 2], [21, 9, 40], [5, 1, 3]  # k = 4, 0 and 2 drafts
    ours, q, out, ref = _verify_both(reqs, prefix, ext, device)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    oracle = paged_attention_oracle(q.view(-1, HEADS, HEAD_DIM), ours.kv_pool.k_buffer[0], ours.kv_pool.v_buffer[0],
                                    ours.req_to_token_pool.req_to_token, reqs, prefix, ext, Layer().scaling)
    torch.testing.assert_close(out.view(-1, HEADS, HEAD_DIM), oracle, atol=1e-4, rtol=1e-4)


def test_one_verify_forward_equals_the_decode_steps_it_replaces(device: torch.device) -> None:
    torch.manual_seed(6)
    verify = Paged.make(KV_HEADS, HEAD_DIM, torch.float32, device)
    verify.fill_prefix(0, 17)
    stepwise = copy.deepcopy(verify)
    backend = TritonAttnBackend(None)
    q, k, v = _qkv(4, torch.float32, device)
    fb = verify.batch([0], [17], [4], ForwardMode.TARGET_VERIFY, backend)
    backend.init_forward_metadata(fb)
    whole = backend.forward(q, k, v, Layer(), fb)
    for j in range(4):
        fb = stepwise.batch([0], [17 + j], [1], ForwardMode.DECODE, backend)
        backend.init_forward_metadata(fb)
        one = backend.forward(q[j : j + 1], k[j : j + 1], v[j : j + 1], Layer(), fb)
        torch.testing.assert_close(one, whole[j : j + 1], atol=1e-4, rtol=1e-4)


def _tree_mask(parents: list[int]) -> torch.Tensor:
    """Node i sees itself and its ancestors (parents[i] is -1 for the root, the request's last token)."""
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return mask


def test_tree_verify_on_triton_matches_the_torch_reference(device: torch.device) -> None:
    """Two trees and one causal request in one batch: Triton's tree mask gives the reference's attention."""
    torch.manual_seed(7)
    trees = [_tree_mask([-1, 0, 0, 1, 2, 2]), None, _tree_mask([-1, 0, 1, 0])]
    reqs, prefix, ext = [0, 1, 2], [19, 8, 33], [6, 3, 4]
    _, _, out, ref = _verify_both(reqs, prefix, ext, device, trees)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # the tree matters: causal attention differs on the branching nodes, and the causal request is untouched
    torch.manual_seed(7)
    _, _, causal, _ = _verify_both(reqs, prefix, ext, device)
    assert not torch.allclose(causal[:6], ref[:6], atol=1e-3)
    torch.testing.assert_close(causal[6:9], ref[6:9], atol=1e-4, rtol=1e-4)
