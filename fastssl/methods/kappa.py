"""The κ monitor of Masked MoCo / BYOL (masked_moco_byol.txt §3.4, Figure 6).

The n chunk representations of one image are unit-normalised and treated as samples of a von
Mises–Fisher distribution on the sphere S^{d−1}; its concentration κ is estimated with Banerjee
et al. (2005)'s approximation of the maximum-likelihood solution

    r̄ = ‖(1/n) Σ_i x̂_i‖,    κ̂ = r̄ (d − r̄²) / (1 − r̄²)

(large κ: the chunks of an image agree; κ → 0: they point anywhere). With few samples per image
(n = 8) r̄ is biased upwards, so κ̂ is a relative monitor across training, as in the paper, not an
unbiased estimate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def vmf_kappa(x: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Per-image vMF concentration of ``x [n, B, d]`` (n samples of each of B images) -> ``[B]``.

    Computed in fp64 (the inputs are small; ``1 − r̄²`` cancels badly in fp32 once the chunks of an
    image agree to 1e-4, which happens at initialisation), returned in fp32 or the input's wider
    dtype. Needs n ≥ 2 (one sample gives r̄ = 1, κ = ∞). ``1 − r̄²`` is clamped at ``eps`` so
    identical samples give a large finite value instead of inf.
    """
    if x.ndim != 3 or x.shape[0] < 2:
        raise ValueError(f"x must be [n >= 2, B, d] (n samples per image), got {tuple(x.shape)}")
    d = x.shape[-1]
    unit = F.normalize(x.double(), dim=-1)
    r = unit.mean(dim=0).norm(dim=-1)  # [B], mean resultant length in [0, 1]
    r2 = r * r
    return (r * (d - r2) / (1.0 - r2).clamp_min(eps)).to(torch.promote_types(x.dtype, torch.float32))
