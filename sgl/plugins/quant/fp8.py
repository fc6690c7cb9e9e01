"""``quant_method: "fp8"``: Hugging Face / DeepSeek / Qwen3 FP8 checkpoints, and online FP8 for a dense one.

- ``weight_block_size: [b0, b1]``: fp8 ``weight`` with a float32 ``weight_scale_inv`` per b0 x b1 tile (it multiplies
  despite its name); activations are quantized dynamically per token and b1 features.
- no block size: fp8 ``weight`` with one ``weight_scale`` per tensor; ``activation_scheme: static`` adds its
  ``input_scale``, ``dynamic`` quantizes activations per token.
- no quantization_config at all (``--quantization fp8`` on a bf16 checkpoint): weights are quantized per output
  channel after loading, activations per token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from sgl.core.quant.base import QuantizationMethod
from sgl.plugins.quant.checks import refuse_ignored_linears, require_float8
from sgl.plugins.quant.fp8_linear import Fp8LinearMethod, Fp8Scheme
from sgl.plugins.quant.fp8_moe import Fp8MoEMethod
from sgl.plugins.quant.kernel_methods import fast_fp8_linear_method, fast_fp8_moe_method

if TYPE_CHECKING:
    from sgl.core.model.linear_method import LinearMethod
    from sgl.core.model.moe_method import MoEMethod
    from sgl.core.platform import Capabilities, Platform

NAME = "fp8"
RUNS_ON = "it runs on the cpu platform and on CUDA GPUs (scaled FP8 GEMMs from compute capability 8.9)"


class Fp8Family(QuantizationMethod):
    """What every FP8 checkpoint format shares once its config is read: one ``Fp8Scheme``, stored in the device's
    e4m3 encoding, computed by the reference or the Triton FP8 method."""

    name = NAME

    def __init__(self, scheme: Fp8Scheme) -> None:
        self.scheme = scheme
        self.fp8_dtype = torch.float8_e4m3fn

    def linear_method(self) -> LinearMethod:
        return Fp8LinearMethod(self.scheme, self.fp8_dtype)

    def check_platform(self, platform: Platform) -> None:
        require_float8(self.name, platform, RUNS_ON)

    def bind_platform(self, platform: Platform) -> None:
        self.fp8_dtype = platform.fp8_dtype()

    def kernel_linear_method(self, capabilities: Capabilities) -> LinearMethod | None:
        return fast_fp8_linear_method(self.scheme, capabilities, self.fp8_dtype)

    def moe_method(self) -> MoEMethod | None:
        return Fp8MoEMethod(self.scheme, self.fp8_dtype)

    def kernel_moe_method(self, capabilities: Capabilities) -> MoEMethod | None:
        return fast_fp8_moe_method(self.scheme, capabilities, self.fp8_dtype)


class Fp8Method(Fp8Family):

    @classmethod
    def from_config(cls, checkpoint_config: Mapping[str, Any]) -> Fp8Method:
        cfg = dict(checkpoint_config)
        if not cfg:
            return cls(Fp8Scheme("channel", "token", serialized=False))
        if cfg.get("quant_method") != NAME:
            raise ValueError(
                f"--quantization fp8 cannot read a {cfg.get('quant_method')!r} checkpoint; drop the flag to use the "
                "checkpoint's own method"
            )
        if cfg.get("fmt", "e4m3") != "e4m3":
            raise ValueError(f"fp8: only e4m3 checkpoints are supported; this one is {cfg.get('fmt')!r}")
        refuse_ignored_linears(NAME, cfg.get("modules_to_not_convert") or cfg.get("ignored_layers"))
        act = cfg.get("activation_scheme", "dynamic")
        if act not in ("dynamic", "static"):
            raise ValueError(f"fp8: activation_scheme must be 'dynamic' or 'static'; got {act!r}")
        block = cfg.get("weight_block_size")
        if block is None:
            return cls(Fp8Scheme("tensor", "static" if act == "static" else "token"))
        if not (isinstance(block, list | tuple) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise ValueError(f"fp8: weight_block_size must be two positive integers; got {block!r}")
        if act != "dynamic":
            raise ValueError("fp8: block-wise weights need activation_scheme 'dynamic'")
        return cls(Fp8Scheme("block", "group", (block[0], block[1]), scale_name="weight_scale_inv"))
