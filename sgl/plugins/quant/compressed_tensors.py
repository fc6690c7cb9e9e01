"""``quant_method: "compressed-tensors"`` (llm-compressor's format), FP8 schemes.

One config group targeting ``Linear``: 8-bit float weights with a ``channel`` ([out, 1]) or ``tensor`` ([1])
``weight_scale``; input activations absent (weight-only), ``token`` + dynamic, or ``tensor`` + static (an
``input_scale`` per layer). Other schemes (INT4/INT8, groups, several config groups) are refused naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sgl.plugins.quant.checks import refuse_ignored_linears
from sgl.plugins.quant.fp8 import Fp8Family
from sgl.plugins.quant.fp8_linear import ActScheme, Fp8Scheme

NAME = "compressed-tensors"
_FORMATS = ("float-quantized", "naive-quantized")


def _fp8_args(args: Any, what: str) -> dict[str, Any]:
    if not isinstance(args, Mapping):
        raise ValueError(f"{NAME}: {what} must be a mapping; got {args!r}")
    if args.get("num_bits") != 8 or args.get("type") != "float":
        raise ValueError(
            f"{NAME}: only 8-bit float {what} are supported; this checkpoint has {args.get('num_bits')}-bit "
            f"{args.get('type')}"
        )
    if args.get("symmetric", True) is not True:
        raise ValueError(f"{NAME}: asymmetric FP8 {what} are not supported")
    return dict(args)


class CompressedTensorsMethod(Fp8Family):
    name = NAME

    @classmethod
    def from_config(cls, checkpoint_config: Mapping[str, Any]) -> CompressedTensorsMethod:
        cfg = dict(checkpoint_config)
        if cfg.get("quant_method") != NAME:
            raise ValueError(f"--quantization {NAME} needs a compressed-tensors checkpoint (its quantization_config)")
        if cfg.get("format") not in _FORMATS:
            raise ValueError(f"{NAME}: format {cfg.get('format')!r} is not supported; supported: {', '.join(_FORMATS)}")
        refuse_ignored_linears(NAME, cfg.get("ignore"))
        groups = cfg.get("config_groups") or {}
        if len(groups) != 1:
            raise ValueError(f"{NAME}: exactly one config group is supported; this checkpoint has {len(groups)}")
        group = next(iter(groups.values()))
        if list(group.get("targets", [])) != ["Linear"]:
            raise ValueError(f"{NAME}: the config group must target ['Linear']; got {group.get('targets')!r}")
        weights = _fp8_args(group.get("weights"), "weights")
        strategy = weights.get("strategy")
        if strategy not in ("channel", "tensor") or weights.get("dynamic", False):
            raise ValueError(f"{NAME}: weight strategy must be static 'channel' or 'tensor'; got {strategy!r}")
        act: ActScheme = "none"
        inputs = group.get("input_activations")
        if inputs is not None:
            inputs = _fp8_args(inputs, "input activations")
            kind = (inputs.get("strategy"), bool(inputs.get("dynamic")))
            if kind == ("token", True):
                act = "token"
            elif kind == ("tensor", False):
                act = "static"
            else:
                raise ValueError(
                    f"{NAME}: input activations must be dynamic per 'token' or static per 'tensor'; got strategy "
                    f"{kind[0]!r}, dynamic {kind[1]}"
                )
        return cls(Fp8Scheme(strategy, act))
