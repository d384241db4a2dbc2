"""The one place that decides which implementation an op runs: the Triton kernel or the eager reference.

Every op in ``fastssl.ops`` takes ``backend: Backend``:
- "auto": the Triton kernel for CUDA tensors, the reference for anything else;
- "reference" / "triton": force one (Triton also runs on CPU under ``TRITON_INTERPRET=1``, which the
  tests use).
Kernel modules are imported by the ops only when this says Triton, so CPU-only use never needs
Triton to import, and an import failure under "auto" on CUDA is raised rather than hidden.

Size rules (``AUTO_SIZE_RULES``, ``auto_size_ok``): an op family whose kernel cannot win at tiny
sizes (a fixed cost per call against little arithmetic) names one threshold here, with the device
it was measured on; under "auto" on CUDA it takes the reference below it. One table, so the
thresholds are set in one place from a benchmark run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Backend = Literal["auto", "reference", "triton"]
_BACKENDS = ("auto", "reference", "triton")


def use_triton(backend: Backend, device: torch.device) -> bool:
    """True when an op on tensors of ``device`` must run its Triton kernel (see the module docstring)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be 'auto', 'reference' or 'triton', got {backend!r}")
    return backend == "triton" or (backend == "auto" and device.type == "cuda")


@dataclass(frozen=True)
class SizeRule:
    """backend="auto" takes the kernel when ``size >= min_size`` (the op defines ``size``)."""

    min_size: int
    size: str  # what the op measures, in words
    measured_on: str  # the device and run the threshold comes from


AUTO_SIZE_RULES: dict[str, SizeRule] = {
    # M·C = anchors × candidate columns (the logits the eager path materialises). Placeholder,
    # PENDING GPU MEASUREMENT: set from `python bench/contrastive.py --quick` (its "auto" rows and the
    # eager/compile/triton crossing). 2048 × 2048: the smallest square case of that sweep is 4096².
    "contrastive": SizeRule(min_size=2048 * 2048, size="rows x cols of the similarity matrix",
                            measured_on="pending GPU measurement (placeholder, not measured)"),
}


def auto_size_ok(op: str, backend: Backend, size: int | None) -> bool:
    """Whether a call that ``use_triton`` sends to the kernel keeps it by the size rule of ``op``:
    always for backend="triton" or an unknown size; under "auto", when ``size`` reaches the threshold."""
    rule = AUTO_SIZE_RULES.get(op)
    return backend != "auto" or size is None or rule is None or size >= rule.min_size
