"""Parameter helpers shared by the methods: a quantized tensor with its shard layout and its dummy filling."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sgl.core.model.linear_method import ShardLayout

DUMMY_SCALE = 0.02  # NOTE: a dummy quantized value of magnitude ~1 times this is a weight of the usual init's size


def quant_param(
    layer: nn.Module, name: str, tensor: torch.Tensor, layout: ShardLayout,
    dummy: Callable[[nn.Parameter, torch.Generator], None],
) -> nn.Parameter:
    """Registers ``tensor`` as ``layer.<name>``: loaded through the layer's loader by ``layout``; filled by ``dummy``
    under ``--load-format dummy``."""
    param = nn.Parameter(tensor, requires_grad=False)
    param.shard_layout = layout  # type: ignore[attr-defined]
    param.dummy_init = dummy  # type: ignore[attr-defined]
    layer.register_parameter(name, param)
    return param


def replace_param(layer: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """After loading: ``layer.<name>`` becomes ``tensor`` (a repacked or requantized form)."""
    if hasattr(layer, name):
        delattr(layer, name)
    layer.register_parameter(name, nn.Parameter(tensor, requires_grad=False))


@torch.no_grad()
def dummy_scale(param: nn.Parameter, gen: torch.Generator) -> None:
    param.data.fill_(DUMMY_SCALE)


@torch.no_grad()
def dummy_normal_cast(param: nn.Parameter, gen: torch.Generator) -> None:
    """Unit-normal values cast into the parameter's narrow dtype (fp8 weights)."""
    noise = torch.randn(param.shape, generator=gen, device=param.device, dtype=torch.float32)
    param.data.copy_(noise.to(param.dtype))


@torch.no_grad()
def dummy_bits(param: nn.Parameter, gen: torch.Generator) -> None:
    """Random bits for packed integer tensors (every int4 value in range)."""
    info = torch.iinfo(param.dtype)
    param.data.copy_(torch.randint(info.min, info.max + 1, param.shape, generator=gen, device=param.device,
                                   dtype=torch.int64).to(param.dtype))


def expand_per_shard(values: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """One value per merged slice -> one per output row ``[out, 1]``."""
    counts = torch.tensor(sizes, device=values.device)
    return values.float().repeat_interleave(counts).unsqueeze(1)
