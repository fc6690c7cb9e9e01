"""Where a forward's new K/V go when the caller stores them itself (a fused prologue kernel).

A leaf module: the backend contract hands one out and the batch's attention protocol names it, and neither of those
two may import the other.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class KVStoreTarget(NamedTuple):
    """A layer's buffers ``[slots, KVH, D]`` and each new token's slot."""

    k_buffer: torch.Tensor
    v_buffer: torch.Tensor
    loc: torch.Tensor  # [T]
