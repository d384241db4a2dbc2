"""The regression losses of the non-contrastive methods (the contrastive ones are ``fastssl.ops``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = −mean_i cos(p_i, z_i) over ``[B, D]`` rows, in fp32 or wider. The caller
    detaches z (stop-gradient) where the method says so."""
    return -F.cosine_similarity(_at_least_fp32(p), _at_least_fp32(z), dim=-1, eps=1e-8).mean()


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's ‖p̄ − z̄‖² = 2 − 2·cos(p, z), averaged over ``[B, D]`` rows, in fp32 or wider."""
    return 2.0 + 2.0 * negative_cosine(p, z)
