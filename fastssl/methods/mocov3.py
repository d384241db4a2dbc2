"""MoCo v3 (Chen, Xie & He 2021): a momentum encoder's keys, a predictor, symmetric InfoNCE.

L = 2τ·[ctr(q₁, k₂) + ctr(q₂, k₁)], ctr = InfoNCE over the keys of the global batch (gathered
from every rank; row i's positive is its own key). The 2τ factor is not in the paper's text; the
official ``moco/builder.py`` multiplies the cross-entropy by 2τ and we follow it. τ = 0.2 for ViT.
Keys come from the EMA copy of encoder + projector (momentum 0.99 → 1, cosine). Heads: projector
3 layers (BN, output BN without affine), predictor 2 layers (BN, plain linear output), hidden 4096, output 256.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fastssl import ops
from fastssl.config_base import Section
from fastssl.methods.parts import MomentumSiamese
from fastssl.models.heads import HeadConfig
from fastssl.ops.dispatch import Backend


def _projector() -> HeadConfig:
    return HeadConfig(hidden_dim=4096, out_dim=256, num_layers=3, norm="batchnorm", last_norm=True)


def _predictor() -> HeadConfig:
    return HeadConfig(hidden_dim=4096, out_dim=256, num_layers=2, norm="batchnorm", last_norm=False)


def symmetric_info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float, *, gather_distributed: bool,
                       backend: Backend = "auto") -> torch.Tensor:
    """MoCo v3's loss 2τ·[ctr(q₁, k₂) + ctr(q₂, k₁)].

    q: ``[2B, D]`` or ``[n, 2B, D]`` (n query chunks per image, M-MoCo: ``info_nce`` then averages
    over all n·B query rows, the paper's eq. 3), k: ``[2B, D]`` keys; both view-major on the
    ``2B`` axis. The keys take no gradient (momentum encoder).
    """
    q1, q2 = q.chunk(2, dim=-2)
    k1, k2 = k.detach().chunk(2)
    ctr = lambda a, b: ops.info_nce(a, b, temperature, gather_distributed=gather_distributed, backend=backend)  # noqa: E731
    return 2.0 * temperature * (ctr(q1, k2) + ctr(q2, k1))


class MoCoV3Config(Section):
    name: Literal["mocov3"] = "mocov3"
    temperature: float = Field(0.2, gt=0, description="τ of InfoNCE (0.2 for ViT in the paper).")
    base_momentum: float = Field(0.99, ge=0.0, le=1.0, description="Momentum-encoder m at step 0, cosine → 1.")
    gather_distributed: bool = Field(True, description="Keys from all ranks (the global batch).")
    backend: Backend = Field("auto", description="Contrastive op implementation.")
    projector: HeadConfig = Field(default_factory=_projector)
    predictor: HeadConfig = Field(default_factory=_predictor, description="Its input width is projector.out_dim.")


class MoCoV3(MomentumSiamese):
    """The step, heads and target: ``parts.MomentumSiamese``; here the loss (q: the predictions)."""

    Config = MoCoV3Config

    def loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q: ``[2B, D]`` predictions, k: ``[2B, D]`` keys (no gradient), view-major."""
        c = self.cfg
        return symmetric_info_nce(q, k, c.temperature, gather_distributed=c.gather_distributed, backend=c.backend)
