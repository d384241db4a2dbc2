"""BYOL (Grill et al. 2020): an online network with a predictor regresses the EMA target's projection.

L = ‖p̄₁ − z̄'₂‖² + ‖p̄₂ − z̄'₁‖² with ‖p̄ − z̄‖² = 2 − 2·cos(p, z), the symmetric sum of the paper's
eq. 2 and its swapped twin; the target takes no gradient and follows the online encoder and
projector with momentum τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2, τ_base = 0.99 → 1 (the paper's
ImageNet value is 0.996; 0.99 suits short runs). Heads: Linear → BN → ReLU → Linear, 4096 → 256.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fastssl.config_base import Section
from fastssl.methods.parts import MomentumSiamese, normalized_mse
from fastssl.models.heads import HeadConfig


def _byol_head() -> HeadConfig:
    return HeadConfig(hidden_dim=4096, out_dim=256, num_layers=2, norm="batchnorm")


class BYOLConfig(Section):
    name: Literal["byol"] = "byol"
    base_momentum: float = Field(0.99, ge=0.0, le=1.0, description="τ_base of the target's cosine momentum schedule (→ 1).")
    projector: HeadConfig = Field(default_factory=_byol_head)
    predictor: HeadConfig = Field(default_factory=_byol_head, description="Its input width is projector.out_dim.")


class BYOL(MomentumSiamese):
    """The step, heads and target: ``parts.MomentumSiamese``; here the loss."""

    Config = BYOLConfig

    @staticmethod
    def loss(p: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
        """p: ``[2B, D]`` or ``[n, 2B, D]`` (n query chunks per image, M-BYOL: the mean over the n·B
        rows is the paper's eq. 3), z_target: ``[2B, D]``; view-major on the 2B axis. View 1's
        prediction regresses view 2's target and back."""
        p1, p2 = p.chunk(2, dim=-2)
        t1, t2 = z_target.chunk(2)
        return normalized_mse(p1, t2) + normalized_mse(p2, t1)
