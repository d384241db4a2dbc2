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
from torch import nn

from fastssl.config_base import Section
from fastssl.data.batch import Batch
from fastssl.data.crops import TWO_VIEWS, CropSpec
from fastssl.models.ema import cosine_momentum
from fastssl.methods.context import StepContext
from fastssl.methods.losses import normalized_mse
from fastssl.methods.output import StepOutput
from fastssl.methods.param_groups import ParamGroup
from fastssl.methods.parts import encode_views, online_and_predictor_groups, pair_metrics, per_view, target_projections
from fastssl.models.ema import EmaTarget
from fastssl.models.heads import HeadConfig, MLPHead


def _byol_head() -> HeadConfig:
    return HeadConfig(hidden_dim=4096, out_dim=256, num_layers=2, norm="batchnorm")


class BYOLConfig(Section):
    name: Literal["byol"] = "byol"
    base_momentum: float = Field(0.99, ge=0.0, le=1.0, description="τ_base of the target's cosine momentum schedule (→ 1).")
    projector: HeadConfig = Field(default_factory=_byol_head)
    predictor: HeadConfig = Field(default_factory=_byol_head, description="Its input width is projector.out_dim.")


class BYOL(nn.Module):
    Config = BYOLConfig

    def __init__(self, cfg: BYOLConfig, encoder: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = MLPHead(encoder.num_features, cfg.projector)
        self.predictor = MLPHead(cfg.projector.out_dim, cfg.predictor)
        self.target = EmaTarget(self.encoder, self.projector)

    def crops(self) -> tuple[CropSpec, ...]:
        return TWO_VIEWS  # view 1 always blurred, view 2 solarized with p = 0.2: data.augment's pairs

    def param_groups(self) -> list[ParamGroup]:
        return online_and_predictor_groups(self.encoder, self.projector, self.predictor)

    @staticmethod
    def loss(p: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
        """p: ``[2B, D]`` or ``[n, 2B, D]`` (n query chunks per image, M-BYOL: the mean over the n·B
        rows is the paper's eq. 3), z_target: ``[2B, D]``; view-major on the 2B axis. View 1's
        prediction regresses view 2's target and back."""
        p1, p2 = p.chunk(2, dim=-2)
        t1, t2 = z_target.chunk(2)
        return normalized_mse(p1, t2) + normalized_mse(p2, t1)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        views = batch["views"]  # [2, B, 3, S, S]
        p = per_view(self.predictor, per_view(self.projector, encode_views(self.encoder, views), 2), 2)
        z_target = target_projections(self.target, views)
        p1, p2 = p.chunk(2)
        return StepOutput(loss=self.loss(p, z_target), metrics=pair_metrics(p1, p2))

    def after_step(self, ctx: StepContext) -> None:
        self.target.update_(self.encoder, self.projector, momentum=cosine_momentum(self.cfg.base_momentum, ctx.progress))
