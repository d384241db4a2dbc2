"""The losses of the non-contrastive methods (the contrastive ones are ``fastssl.ops``).

Shared here rather than kept in one method's file: SwAV and Accel-SwAV both use ``swapped_prediction``.
"""
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


def swapped_prediction(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """SwAV's loss. scores: per crop ``[B, K]`` (the first ``len(codes)`` are the crops with codes),
    codes: per coded crop ``[B, K]`` (rows sum to 1, no gradient). Each coded crop i is predicted
    by every other crop v: mean over i of the mean over v ≠ i of −Σ_k Q_i · log softmax(s_v / τ)."""
    total = scores[0].new_zeros((), dtype=torch.float32)
    for i, q in enumerate(codes):
        others = [v for v in range(len(scores)) if v != i]
        sub = sum(-(q * F.log_softmax(scores[v].float() / temperature, dim=1)).sum(1).mean() for v in others)
        total = total + sub / len(others)
    return total / len(codes)
