"""The CUDA plugin's own server options (``--cuda-pdl``). A light module: the dataclass only."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CudaArgs:
    pdl: bool = field(default=False, metadata={"help": (
        "launch the decode-path Triton kernels with programmatic dependent launch (Hopper and later): each kernel "
        "starts while the previous one drains. Not yet timed on a GPU; off by default")})
