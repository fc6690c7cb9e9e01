"""Under tensor parallelism every rank samples, then takes rank 0's tokens: ranks agree token for token even where
their random streams could drift (a seed consumed by user code in the Engine's process, a platform kernel that
draws differently), and every rank's KV then holds the same sequence."""

from __future__ import annotations

from typing import Any

from sgl.core.distributed.communicator import ParallelState


class RankZeroTokens:
    """Wraps a platform sampler; its output's ``next_token_ids`` are rank 0's on every rank."""

    def __init__(self, sampler: Any, parallel: ParallelState) -> None:
        self.sampler = sampler
        self.parallel = parallel

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.sampler(*args, **kwargs)
        ids = self.parallel.comm.broadcast(out.next_token_ids.contiguous(), src=0)
        return out._replace(next_token_ids=ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)
