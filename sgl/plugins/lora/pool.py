"""The device pool: ``--max-loras-per-batch`` slots of A/B buffers per adapted layer, filled from host copies.

Every adapted layer has A ``[slots, n_slices * R, in]`` (the slices' A matrices stacked, so one shrink serves a merged
layer) and one B ``[slots, slice_size, R]`` per slice, R = ``--max-lora-rank``. An adapter of rank r < R fills the
first r of its R rows and columns; the rest stay zero, as do the slices and layers it does not target, so every
slot computes exactly its adapter's update.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

import torch

from sgl.core.model.linear import LinearBase, OutputSlice
from sgl.plugins.lora.peft_adapter import AdapterWeights
from sgl.plugins.lora.targets import Target


@dataclass
class LayerBuffers:
    layer: LinearBase
    slices: list[OutputSlice]
    a: torch.Tensor  # [slots, n_slices * R, in]
    bs: list[torch.Tensor]  # per slice: [slots, slice_size, R]


class AdapterPool:
    """Slots are handed out least recently used first; a slot an admitted request still needs is never taken.

    NOTE: a slot's buffers are rewritten on the device's stream, after every forward already enqueued, so a step in
    flight keeps reading the weights it was launched with."""

    def __init__(self, targets: dict[str, Target], num_slots: int, max_rank: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.num_slots = num_slots
        self.rank = max_rank
        self.layers: dict[str, LayerBuffers] = {}
        self._where: dict[str, tuple[str, int]] = {}  # HF module name -> (layer name, slice index)
        for module, t in targets.items():
            self._where[module] = (t.layer_name, t.slice_index)
            if t.layer_name in self.layers:
                continue
            slices = t.layer.output_slices()
            self.layers[t.layer_name] = LayerBuffers(
                t.layer, slices,
                torch.zeros(num_slots, len(slices) * max_rank, t.layer.in_features, dtype=dtype, device=device),
                [torch.zeros(num_slots, s.size, max_rank, dtype=dtype, device=device) for s in slices],
            )
        self._slot_of: OrderedDict[int, int] = OrderedDict()  # adapter uid -> slot, least recently used first
        self._free = list(range(num_slots))

    def slot(self, uid: int, weights: AdapterWeights, busy: Collection[int]) -> int:
        """The slot holding adapter ``uid``, loading it (over the least recently used idle adapter) if needed.

        NOTE: the caller keeps at most ``num_slots`` adapters busy, so an idle slot always exists."""
        if uid in self._slot_of:
            self._slot_of.move_to_end(uid)
            return self._slot_of[uid]
        if self._free:
            slot = self._free.pop()
        else:
            victim = next(u for u in self._slot_of if u not in busy)
            slot = self._slot_of.pop(victim)
        self._write(slot, weights)
        self._slot_of[uid] = slot
        return slot

    def drop(self, uid: int) -> None:
        slot = self._slot_of.pop(uid, None)
        if slot is not None:
            self._free.append(slot)

    def resident(self) -> int:
        return len(self._slot_of)

    def _write(self, slot: int, weights: AdapterWeights) -> None:
        for buf in self.layers.values():
            buf.a[slot].zero_()
            for b in buf.bs:
                b[slot].zero_()
        r, big = weights.rank, self.rank
        for module, (a, b) in weights.modules.items():
            layer_name, k = self._where[module]
            buf = self.layers[layer_name]
            buf.a[slot, k * big:k * big + r].copy_(a, non_blocking=True)
            buf.bs[k][slot, :, :r].copy_(b, non_blocking=True)
