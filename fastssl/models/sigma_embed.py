"""CAN's noise-level embedding (can.txt §3.4): a sinusoidal embedding of σ through a 2-layer MLP
with ReLU of constant width d, added to every decoder token (mask tokens included).

CAN does not say how σ ∈ [0, σ_max] is scaled before the sinusoid. Its embedding is DDPM's time
embedding, which embeds integer timesteps 0..1000; raw σ ≤ 0.05 would give sin ≈ 0 and cos ≈ 1 at
every frequency (nothing to tell noise levels apart), so we map σ linearly onto DDPM's range:
t = σ · ``scale`` with scale = 1000 / σ_max by default.
"""
from __future__ import annotations

import torch
from torch import nn

from fastssl.models.sincos import sinusoid


class SigmaEmbedding(nn.Module):
    """``sigma [N]`` -> ``[N, dim]`` = fc2(relu(fc1(sinusoid(σ·scale))))."""

    def __init__(self, dim: int, scale: float = 1000.0 / 0.05):
        super().__init__()
        self.dim, self.scale = dim, scale
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        e = sinusoid(sigma * self.scale, self.dim).to(self.fc1.weight.dtype)
        return self.fc2(torch.relu(self.fc1(e)))
