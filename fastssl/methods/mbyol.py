"""Masked BYOL (masked_moco_byol.txt): BYOL with the online view cut into n chunks (default 8), each
encoded as its own image, the loss averaged over the n predictions (eq. 3), an optional
spherical-mean target over m chunks (eq. 4), LayerNorm heads and optional class attention.

The loss is BYOL's, reused: ‖p̄₁ − z̄'₂‖² + ‖p̄₂ − z̄'₁‖² (``BYOL.loss``). Heads follow the paper's
set-up (§3.1: "the same Projector MLP and Predictor MLP as MoCo-v3", 3 and 2 layers, no norm on
the predictor's output) rather than BYOL's own 2-layer projector; see ``masked.py``.
"""
from __future__ import annotations

from typing import Literal

import torch

from fastssl.methods.byol import BYOL
from fastssl.methods.masked import MaskedSiamese, MaskingFields


class MBYOLConfig(MaskingFields):
    name: Literal["mbyol"] = "mbyol"


class MBYOL(MaskedSiamese):
    Config = MBYOLConfig

    def loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q ``[n, 2B, P]`` chunk predictions, k ``[2B, P]`` targets (no gradient), view-major."""
        return BYOL.loss(q, k.detach())
