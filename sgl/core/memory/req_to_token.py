"""ReqToTokenPool: for each running request slot, the KV slot index of each of its tokens."""

from __future__ import annotations

import torch

from sgl.core.transfer import to_device


class ReqToTokenPool:
    """An int32 table [size, max_context_len]; row r lists the KV slots of request slot r's tokens in order.

    NOTE: on a device the table has a host mirror, ``host``, that every write updates too: the scheduler and the
    caches read slots from the mirror, so no read ever waits for the device. Kernels read ``req_to_token``.
    """

    def __init__(
        self, size: int, max_context_len: int, device: torch.device | str = "cpu", pinned: bool = False
    ) -> None:
        self.size = size
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self.pinned = pinned
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int32, device=device)
        on_host = self.device.type == "cpu"
        self.host = self.req_to_token if on_host else torch.zeros((size, max_context_len), dtype=torch.int32)
        self._free: list[int] = list(range(size))

    @property
    def on_host(self) -> bool:
        """The device table is the host mirror (a CPU device): a host write is the device write."""
        return self.host is self.req_to_token

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
        """Row ``index``, columns ``start:``, on the host mirror and (asynchronously) on the device."""
        end = start + slots.numel()
        host_slots = slots.to("cpu", torch.int32)
        self.host[index, start:end] = host_slots
        if self.host is not self.req_to_token:
            self.req_to_token[index, start:end] = to_device(host_slots, self.device, self.pinned)

    def write_host(self, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor) -> None:
        """Scattered writes to the host mirror only; the caller writes the device table itself (decode)."""
        self.host[rows, cols] = slots.to(torch.int32)

    def write_scattered(self, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor) -> None:
        """``table[rows[i], cols[i]] = slots[i]`` on the host mirror and (asynchronously) on the device."""
        self.write_host(rows, cols, slots)
        if self.host is not self.req_to_token:
            packed = to_device(torch.stack([rows, cols, slots.to(torch.int64)]), self.device, self.pinned)
            self.req_to_token[packed[0], packed[1]] = packed[2].to(torch.int32)

    def read(self, index: int, length: int) -> torch.Tensor:
        """The first ``length`` slots of row ``index`` (int64, host), without touching the device."""
        return self.host[index, :length].to(torch.int64)

    def read_list(self, index: int, start: int, end: int) -> list[int]:
        """Slots ``start .. end - 1`` of row ``index`` as Python ints, from the host mirror (no device read)."""
        return self.host[index, start:end].tolist()

    def clear(self) -> None:
        self._free = list(range(self.size))
