"""The CUDA plugin registers by strings, imports nothing heavy, and its platform answers per the contract."""

from __future__ import annotations

import subprocess
import sys

import torch

from sgl.core.ops.table import Ops
from sgl.core.plugins import check_plugin_module
from sgl.core.registry import resolve
from sgl.kernels.attention_backend import TritonAttnBackend
from sgl.plugins.cuda import plugin
from sgl.plugins.cuda.platform import CudaPlatform


def test_plugin_and_platform_modules_import_neither_triton_nor_cuda_state() -> None:
    code = (
        "import sys, torch; import sgl.plugins.cuda.plugin, sgl.plugins.cuda.platform as p; "
        "assert 'triton' not in sys.modules, 'triton imported'; "
        "assert 'sgl.kernels' not in sys.modules, 'kernels imported'; "
        "p.CudaPlatform.is_available(); "
        "assert not torch.cuda.is_initialized(), 'probing initialised CUDA'"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_hooks_register_the_platform_and_backend_by_string() -> None:
    check_plugin_module("cuda", plugin)
    platforms, backends = plugin.sgl_platforms(), plugin.sgl_attention_backends()
    assert platforms == {"cuda": "sgl.plugins.cuda.platform:CudaPlatform"}
    assert backends == {"triton": "sgl.kernels.attention_backend:TritonAttnBackend"}
    assert resolve(platforms["cuda"]) is CudaPlatform
    assert resolve(backends["triton"]) is TritonAttnBackend


def test_platform_identity_and_probe_follow_the_device() -> None:
    assert (CudaPlatform.name, CudaPlatform.device_type, CudaPlatform.dist_backend) == ("cuda", "cuda", "nccl")
    assert CudaPlatform.probe_priority == 10
    assert CudaPlatform.is_available() == (torch.cuda.is_available() and torch.version.hip is None)
    platform = CudaPlatform()
    assert platform.default_attention_backend() == "triton"
    caps = platform.capabilities
    assert caps.triton == CudaPlatform.is_available()
    assert caps.graph_capture and caps.overlap_schedule and caps.pinned_memory and caps.streams
    assert platform.describe()["capabilities"] == caps.as_dict()


def test_ops_table_swaps_in_the_triton_kernels() -> None:
    from sgl import kernels

    ops = CudaPlatform().ops()
    assert isinstance(ops, Ops)
    assert ops.rms_norm is kernels.rms_norm and ops.add_rms_norm is kernels.add_rms_norm
    assert ops.silu_and_mul is kernels.silu_and_mul and ops.gelu_tanh_and_mul is kernels.gelu_tanh_and_mul
    assert ops.rotary_embedding is kernels.rotary_embedding
    assert ops.fused_moe is kernels.fused_moe
