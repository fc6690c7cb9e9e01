"""ReqToTokenPool: for each running request slot, the KV slot index of each of its tokens."""

from __future__ import annotations

import torch


class ReqToTokenPool:
    """An int32 table [size, max_context_len]; row r lists the KV slots of request slot r's tokens in order."""

    def __init__(self, size: int, max_context_len: int, device: torch.device | str = "cpu") -> None:
        self.size = size
        self.max_context_len = max_context_len
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int32, device=device)
        self._free: list[int] = list(range(size))

    def available_size(self) -> int:
        return len(self._free)

    def alloc(self) -> int | None:
        return self._free.pop() if self._free else None

    def free(self, index: int) -> None:
        # NOTE: a double free would hand one row to two requests; fail loudly instead.
        if index in self._free:
            raise RuntimeError(f"request slot {index} freed twice")
        self._free.append(index)

    def write(self, index: int, start: int, slots: torch.Tensor) -> None:
        self.req_to_token[index, start : start + slots.numel()] = slots.to(torch.int32)

    def clear(self) -> None:
        self._free = list(range(self.size))
