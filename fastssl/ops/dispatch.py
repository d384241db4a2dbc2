"""The one place that decides which implementation an op runs: the Triton kernel or the eager reference.

Every op in ``fastssl.ops`` takes ``backend: Backend``:
- "auto": the Triton kernel for CUDA tensors, the reference for anything else;
- "reference" / "triton": force one (Triton also runs on CPU under ``TRITON_INTERPRET=1``, which the
  tests use).
Kernel modules are imported by the ops only when this says Triton, so CPU-only use never needs
Triton to import, and an import failure under "auto" on CUDA is raised rather than hidden.
"""
from __future__ import annotations

from typing import Literal

import torch

Backend = Literal["auto", "reference", "triton"]
_BACKENDS = ("auto", "reference", "triton")


def use_triton(backend: Backend, device: torch.device) -> bool:
    """True when an op on tensors of ``device`` must run its Triton kernel (see the module docstring)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be 'auto', 'reference' or 'triton', got {backend!r}")
    return backend == "triton" or (backend == "auto" and device.type == "cuda")
