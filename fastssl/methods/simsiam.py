"""SimSiam (Chen & He 2021): a predictor, a stop-gradient and a symmetric negative cosine.

L = D(p₁, sg(z₂))/2 + D(p₂, sg(z₁))/2 with D = −cos. The predictor trains at a fixed LR (no
warm-up or decay), which the paper reports as better; its official code marks the predictor's
group with ``fix_lr`` and we follow that. Heads as in the paper: a 3-layer projector with BN on
every layer, the output BN without affine; a 2-layer bottleneck predictor (2048 → 512 → 2048).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from fastssl.config_base import Section
from fastssl.data.batch import Batch
from fastssl.data.crops import TWO_VIEWS, CropSpec
from fastssl.methods.base import MethodModule, ParamGroup, StepContext, StepOutput, trainable
from fastssl.methods.parts import encode_views, pair_metrics, per_view, simsiam_loss, simsiam_predictor
from fastssl.models.heads import HeadConfig, MLPHead


def _projector() -> HeadConfig:
    return HeadConfig(hidden_dim=2048, out_dim=2048, num_layers=3, norm="batchnorm", last_norm=True)


def _predictor() -> HeadConfig:
    return simsiam_predictor()


class SimSiamConfig(Section):
    name: Literal["simsiam"] = "simsiam"
    fix_predictor_lr: bool = Field(True, description="The predictor stays at the peak LR (no warm-up, no cosine decay).")
    projector: HeadConfig = Field(default_factory=_projector)
    predictor: HeadConfig = Field(default_factory=_predictor, description="Its input width is projector.out_dim; out_dim must equal it.")


class SimSiam(MethodModule):
    Config = SimSiamConfig

    def __init__(self, cfg: SimSiamConfig, encoder: nn.Module):
        super().__init__(cfg, encoder)
        if cfg.predictor.out_dim != cfg.projector.out_dim:
            raise ValueError(f"method.predictor.out_dim ({cfg.predictor.out_dim}) must equal method.projector.out_dim ({cfg.projector.out_dim})")
        self.projector = MLPHead(encoder.num_features, cfg.projector)
        self.predictor = MLPHead(cfg.projector.out_dim, cfg.predictor)

    def crops(self) -> tuple[CropSpec, ...]:
        return TWO_VIEWS

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("backbone", trainable(self.encoder, "encoder.") + trainable(self.projector, "projector.")),
                ParamGroup("predictor", trainable(self.predictor, "predictor."), fixed_lr=self.cfg.fix_predictor_lr)]

    loss = staticmethod(simsiam_loss)  # shared with DAC (methods/parts.py)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        z = per_view(self.projector, encode_views(self.encoder, batch["views"]), 2)
        p = per_view(self.predictor, z, 2)
        z1, z2 = z.chunk(2)
        return StepOutput(loss=self.loss(p, z), metrics=pair_metrics(z1, z2))
