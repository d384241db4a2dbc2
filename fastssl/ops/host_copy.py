"""Host tensors onto the device without making the host wait for it.

The methods draw their per-step randomness (MAE's masks, M-MoCo's chunk permutations, CAN's noise
levels, Accel's region offsets) on a CPU generator: the same numbers on every device, rank and resume
(``StepContext.generator``), and no device sync to read a seed. Moving such a tensor with a plain
``.to("cuda")`` copies from pageable memory, and PyTorch's blocking host-to-device copy synchronises
the stream: the host waits until the device has run everything queued before it, once per draw, so
it cannot run ahead to queue the step's launches. A pinned copy with ``non_blocking=True`` is queued
behind the stream's work instead; the caching host allocator keeps the pinned block until that copy
has run, so the source may go out of scope at once.
"""
from __future__ import annotations

import torch

PINNED = {"cuda"}  # device types whose host-to-device copies go through pinned memory (tests add "meta")


def to_device(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``t`` on ``device``: pinned and non-blocking from the host to CUDA (see the module docstring),
    ``t.to(device)`` otherwise (CPU, meta, already there). Under torch.compile the plain copy: pinning
    has no fake kernel, and a compiled graph moves its host inputs itself."""
    if device is None:
        return t
    device = torch.device(device)
    if device.type not in PINNED or t.device.type != "cpu" or torch.compiler.is_compiling():
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
