"""TritonAttnBackend end to end on a hand-built paged batch: extend over cached prefixes, then decode steps, against
the contract's oracle and the torch-native reference backend."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from kernel_oracle import Paged, paged_attention_oracle

from sgl.core.memory.kv_pool import FP8_KV_DTYPES
from sgl.core.platform import Capabilities
from sgl.core.runner.forward_batch import ForwardBatch, ForwardMode
from sgl.kernels.attention_backend import DecodeMetadata, ExtendMetadata, TritonAttnBackend

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 32


@dataclass
class Layer:
    layer_id: int = 0
    num_heads: int = HEADS
    num_kv_heads: int = KV_HEADS
    head_dim: int = HEAD_DIM
    scaling: float = HEAD_DIM**-0.5


def _qkv(n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.randn(n, HEADS * HEAD_DIM, dtype=dtype, device=device),
            torch.randn(n, KV_HEADS * HEAD_DIM, dtype=dtype, device=device),
            torch.randn(n, KV_HEADS * HEAD_DIM, dtype=dtype, device=device))


def _check_step(paged: Paged, fb: ForwardBatch, backend: TritonAttnBackend, prefix: list[int], ext: list[int],
                dtype: torch.dtype) -> torch.Tensor:
    q, k, v = _qkv(sum(ext), dtype, paged.kv_pool.device)
    backend.init_forward_metadata(fb)
    out = backend.forward(q, k, v, Layer(), fb)
    assert out.shape == q.shape
    # the new K/V must be in the pool at out_cache_loc before anything attends to them
    stored_k = paged.kv_pool.k_buffer[0][fb.out_cache_loc].reshape(k.shape)
    stored_v = paged.kv_pool.v_buffer[0][fb.out_cache_loc].reshape(v.shape)
    if paged.kv_pool.dtype in FP8_KV_DTYPES:
        # NOTE: loose: the interpreter's fp8 rounding can land a binade low; bit-exact stores are checked on a GPU.
        torch.testing.assert_close(stored_k.to(dtype), k, atol=0.02, rtol=0.5)
        torch.testing.assert_close(stored_v.to(dtype), v, atol=0.02, rtol=0.5)
    else:
        torch.testing.assert_close(stored_k, k)
        torch.testing.assert_close(stored_v, v)
    ref = paged_attention_oracle(q.view(-1, HEADS, HEAD_DIM), paged.kv_pool.k_buffer[0], paged.kv_pool.v_buffer[0],
                                 paged.req_to_token_pool.req_to_token, fb.req_pool_indices.tolist(), prefix, ext,
                                 Layer().scaling)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.view(-1, HEADS, HEAD_DIM).float(), ref, atol=tol, rtol=tol)
    return out


@pytest.mark.parametrize(
    "dtype,kv_dtype",
    [
        pytest.param(torch.float32, None, id="fp32"),
        pytest.param(torch.bfloat16, None, id="bf16"),
        pytest.param(torch.bfloat16, torch.float8_e4m3fn, id="bf16-kv-fp8_e4m3"),
        pytest.param(torch.float32, torch.float8_e5m2, id="fp32-kv-fp8_e5m2"),
    ],
)
def test_extend_then_decode_matches_oracle(
    dtype: torch.dtype, kv_dtype: torch.dtype | None, device: torch.device
) -> None:
    """An fp8 pool is checked against the oracle on the same (upcast) buffers: the compute dtype's tolerance holds."""
    torch.manual_seed(0)
    paged = Paged.make(KV_HEADS, HEAD_DIM, kv_dtype or dtype, device)
    backend = TritonAttnBackend(None)
    reqs, prefix = [2, 0, 1], [0, 9, 30]
    for r, p in zip(reqs, prefix):
        paged.fill_prefix(r, p)
    ext = [12, 3, 5]
    fb = paged.batch(reqs, prefix, ext, ForwardMode.EXTEND, backend)
    _check_step(paged, fb, backend, prefix, ext, dtype)
    assert isinstance(fb.attn_metadata, ExtendMetadata) and fb.attn_metadata.max_extend_len == 12
    seq = [p + n for p, n in zip(prefix, ext)]
    for _ in range(2):
        fb = paged.batch(reqs, seq, [1, 1, 1], ForwardMode.DECODE, backend)
        _check_step(paged, fb, backend, seq, [1, 1, 1], dtype)
        assert isinstance(fb.attn_metadata, DecodeMetadata)
        seq = [s + 1 for s in seq]


def test_mixed_batch_treats_decodes_as_extends_of_one(device: torch.device) -> None:
    torch.manual_seed(1)
    paged = Paged.make(KV_HEADS, HEAD_DIM, torch.float32, device)
    backend = TritonAttnBackend(None)
    paged.fill_prefix(0, 17)
    fb = paged.batch([1, 0], [0, 17], [6, 1], ForwardMode.MIXED, backend)
    _check_step(paged, fb, backend, [0, 17], [6, 1], torch.float32)


@pytest.mark.parametrize("fused", [False, True], ids=["two-kernel", "merge-in-stage1"])
@pytest.mark.parametrize(("ext", "tail"), [
    ([6, 1, 1, 1], 3),  # a prefill chunk, then the running decodes: those go through the decode kernels
    ([1, 1, 1, 1], 4),  # decodes only
    ([1, 5, 1, 3], 0),  # a one-token extend inside the batch stays with the extend kernel
])
def test_mixed_batch_runs_its_decode_tail_through_the_decode_kernels(
    device: torch.device, ext: list[int], tail: int, fused: bool
) -> None:
    """The extend kernel would give each decode a BLOCK_M-row query tile with one live row (H100, 16 req/s: mixed
    steps of ~65 ms); the decode kernels give the same attention."""
    torch.manual_seed(2)
    paged = Paged.make(KV_HEADS, HEAD_DIM, torch.float32, device)
    backend = TritonAttnBackend(SimpleNamespace(args=SimpleNamespace(enable_layer_fusion=fused)))
    reqs, prefix = [3, 0, 2, 1], [0, 40, 9, 23]
    for r, p in zip(reqs, prefix):
        paged.fill_prefix(r, p)
    fb = paged.batch(reqs, prefix, ext, ForwardMode.MIXED, backend)
    _check_step(paged, fb, backend, prefix, ext, torch.float32)
    meta = fb.attn_metadata
    assert isinstance(meta, ExtendMetadata)
    if tail:
        assert meta.decode_tail is not None and (meta.decode_tail.first, meta.decode_tail.count) == (4 - tail, tail)
        assert meta.max_extend_len == max(ext[: 4 - tail], default=0)
    else:
        assert meta.decode_tail is None


def test_outputs_and_pool_match_torch_native_backend(device: torch.device) -> None:
    torch_native = pytest.importorskip("sgl.core.attention.torch_native")
    torch.manual_seed(2)
    ours = Paged.make(KV_HEADS, HEAD_DIM, torch.float32, device)
    reqs, prefix, ext = [0, 1], [13, 0], [4, 7]
    for r, n_prefix in zip(reqs, prefix):
        ours.fill_prefix(r, n_prefix)
    theirs = copy.deepcopy(ours)
    triton_backend, native = TritonAttnBackend(None), torch_native.TorchNativeAttnBackend(None)
    steps = [(ForwardMode.EXTEND, prefix, ext), (ForwardMode.DECODE, [17, 7], [1, 1])]
    for mode, before, new in steps:
        q, k, v = _qkv(sum(new), torch.float32, device)
        fb_ours = ours.batch(reqs, before, new, mode, triton_backend)
        fb_theirs = theirs.batch(reqs, before, new, mode, native)
        triton_backend.init_forward_metadata(fb_ours)
        native.init_forward_metadata(fb_theirs)
        out = triton_backend.forward(q, k, v, Layer(), fb_ours)
        ref = native.forward(q, k, v, Layer(), fb_theirs)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        assert torch.equal(ours.kv_pool.k_buffer[0], theirs.kv_pool.k_buffer[0])
        assert torch.equal(ours.kv_pool.v_buffer[0], theirs.kv_pool.v_buffer[0])


def test_graph_replay_updates_captured_metadata_in_place(device: torch.device) -> None:
    """Capture fixes the tensors the kernels read; replay must refresh them without reallocating."""
    torch.manual_seed(3)
    paged = Paged.make(KV_HEADS, HEAD_DIM, torch.float32, device)
    backend = TritonAttnBackend(SimpleNamespace(device=device))
    backend.init_graph_state(max_bs=4, max_context_len=256)
    reqs, seq = [0, 1], [3, 100]
    for r, s in zip(reqs, seq):
        paged.fill_prefix(r, s)
    fb = paged.batch(reqs, seq, [1, 1], ForwardMode.DECODE, backend)
    backend.init_metadata_capture(2, fb)
    meta = fb.attn_metadata
    assert isinstance(meta, DecodeMetadata) and meta.graph
    q, k, v = _qkv(2, torch.float32, device)
    backend.forward_decode(q, k, v, Layer(), fb)
    ptr = meta.num_kv_splits.data_ptr()
    seq = [s + 1 for s in seq]
    fb = paged.batch(reqs, seq, [1, 1], ForwardMode.DECODE, backend)
    backend.init_metadata_replay(2, fb)
    assert fb.attn_metadata is meta and meta.num_kv_splits.data_ptr() == ptr
    replayed = backend.forward_decode(q, k, v, Layer(), fb)
    eager_fb, eager_backend = copy.copy(fb), TritonAttnBackend(None)
    eager_backend.init_forward_metadata(eager_fb)
    eager = eager_backend.forward_decode(q, k, v, Layer(), eager_fb)
    torch.testing.assert_close(replayed, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fp8,kv_dtype,ok", [(False, torch.float8_e4m3fn, False), (False, torch.float8_e5m2, True),
                                             (True, torch.float8_e4m3fn, True)])
def test_fp8_e4m3_kv_cache_needs_an_fp8_device(fp8: bool, kv_dtype: torch.dtype, ok: bool) -> None:
    """Triton has no e4m3 type before compute capability 8.9: the backend says so at startup, with the way out."""
    runner = SimpleNamespace(kv_pool=SimpleNamespace(dtype=kv_dtype),
                             platform=SimpleNamespace(capabilities=Capabilities(fp8=fp8)))
    if ok:
        TritonAttnBackend(runner)
    else:
        with pytest.raises(ValueError, match="kv_cache_dtype fp8_e4m3.*fp8_e5m2"):
            TritonAttnBackend(runner)
