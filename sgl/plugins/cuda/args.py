"""The CUDA plugin's own server options (``--cuda-pdl``). A light module: the dataclass only."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CudaArgs:
    pdl: bool | None = field(default=None, metadata={"help": (
        "launch the decode-path Triton kernels with programmatic dependent launch: each kernel starts while the "
        "previous one drains. Default: on where it can be (decode CUDA graphs on an sm90+ GPU); --cuda-pdl insists "
        "(refused where it cannot apply), --no-cuda-pdl turns it off")})

    def wanted(self, graphs: bool, capable: bool) -> bool:
        """Whether the decode graphs launch dependents: as asked, else (auto) wherever the device and graphs allow."""
        return capable and graphs if self.pdl is None else self.pdl and capable
