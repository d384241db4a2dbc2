"""A ring buffer of keys: MoCo v2's queue of negatives, also SwAV's optional queue of past features.

A method holds ``self.queue = KeyQueue(size, dim)``, reads ``self.queue.keys`` (the negatives, [K, D])
in its forward and calls ``self.queue.enqueue(k)`` with the batch's keys after using them (MoCo v2's
official order: the loss of step t sees the keys of steps before t only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.ops.distributed import gather_rows


class KeyQueue(nn.Module):
    """FIFO of the last ``size`` keys of the global batch, kept as buffers (checkpointed, resumed).

    Buffers: ``keys`` [K, D] (the module's float dtype: DeepSpeed's bf16 cast makes it bf16, which
    only rounds negatives the bf16 matmul would round anyway), ``ptr`` (the slot the next batch
    starts at) and ``filled`` (how many slots hold enqueued keys, saturating at K), both int64.
    ``keys`` starts as random unit vectors, as MoCo's official queue does, drawn from a generator
    seeded with ``seed``: every rank builds the same queue without communication. MoCo v2 enqueues
    unit keys only, so its queue holds unit vectors throughout and its loss does not renormalise them
    (``info_nce(..., unit_queue=True)``). Slots are overwritten oldest first; ``keys`` is in slot
    order, not age order (InfoNCE's negatives and SwAV's scores are a set, so the order never
    matters to a loss).
    """

    def __init__(self, size: int, dim: int, *, seed: int = 0):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}")
        self.size = size
        start = torch.randn(size, dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("keys", F.normalize(start, dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, *, gather_distributed: bool = True) -> None:
        """Write the batch's keys [n, D] (of every rank, in rank order, with ``gather_distributed``)
        into the oldest slots and advance the pointer by the global batch B, mod K.

        K must be a multiple of B (MoCo's official code asserts the same), so a batch never wraps
        around the end. No host sync: slots are computed on the device from ``ptr``.
        """
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"keys must be [n, {self.keys.shape[1]}], got {tuple(keys.shape)}")
        batch = gather_rows(keys.detach())[0] if gather_distributed else keys.detach()
        b = batch.shape[0]
        if self.size % b:
            raise ValueError(f"queue size {self.size} must be a multiple of the global batch of keys ({b})")
        slots = self.ptr + torch.arange(b, device=self.ptr.device)
        self.keys.index_copy_(0, slots.to(self.keys.device), batch.to(self.keys.dtype))
        self.ptr.add_(b).remainder_(self.size)
        self.filled.add_(b).clamp_(max=self.size)

    def full(self) -> bool:
        """True once K keys have been enqueued since construction (SwAV uses its queue only then).
        Reads a device scalar: one host sync."""
        return int(self.filled) >= self.size

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.keys.shape[1]}"
