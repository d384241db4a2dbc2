"""SimSiam's predictor and loss, shared by SimSiam and DAC (which trains SimSiam between its two views).

Loss (SimSiam eq. 4, symmetric, stop-gradient on the targets):
    L = D(p₁, sg(z₂))/2 + D(p₂, sg(z₁))/2,   D = −cos
The predictor is SimSiam's 2-layer bottleneck MLP (BN + ReLU hidden layer, plain linear output);
``SiamesePair`` holds a projector and that predictor and applies both per view (BatchNorm
statistics per view, as SimSiam's official code runs each view through the heads separately).
"""
from __future__ import annotations

import torch
from torch import nn

from fastssl.methods.losses import negative_cosine
from fastssl.methods.parts import per_view
from fastssl.models.heads import HeadConfig, MLPHead


def simsiam_predictor(out_dim: int = 2048, hidden_dim: int = 512) -> HeadConfig:
    """SimSiam's predictor: out_dim → hidden_dim (BN, ReLU) → out_dim (its input is the projection)."""
    return HeadConfig(hidden_dim=hidden_dim, out_dim=out_dim, num_layers=2, norm="batchnorm")


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """p, z: ``[2B, D]`` view-major; z is detached here (the stop-gradient)."""
    p1, p2 = p.chunk(2)
    z1, z2 = z.detach().chunk(2)
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


class SiamesePair(nn.Module):
    """Projector + SimSiam predictor on two views' features ``h [2B, D]`` -> ``(p, z)``, each ``[2B, P]``."""

    def __init__(self, in_dim: int, projector: HeadConfig, predictor: HeadConfig):
        super().__init__()
        if predictor.out_dim != projector.out_dim:
            raise ValueError(f"method.predictor.out_dim ({predictor.out_dim}) must equal method.projector.out_dim ({projector.out_dim})")
        self.projector = MLPHead(in_dim, projector)
        self.predictor = MLPHead(projector.out_dim, predictor)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = per_view(self.projector, h, 2)
        return per_view(self.predictor, z, 2), z
