"""``method.accel``: the intermediate-loss acceleration of intermediate_contrastive_loss.txt
(Accel-SimCLR, Accel-MoCo v2, Accel-SwAV). The machinery is ``methods/accel.py``."""
from __future__ import annotations

from pydantic import Field

from fastssl.config_base import Section
from fastssl.models.heads import HeadConfig


def _stage_head() -> HeadConfig:
    return HeadConfig(hidden_dim=512, out_dim=128, num_layers=2, norm="batchnorm")


class AccelConfig(Section):
    partial_backprop: bool = Field(True, description="PB: each step back-props from one stage's loss, drawn uniformly; later stages are not run.")
    hard_pairs: bool = Field(True, description="HP: after the listed stages keep, per image, the hardest of M×M region pairs.")
    regions: int = Field(2, ge=1, description="M random regions per view at each HP stage (paper: 2).")
    region_scale: float = Field(0.75, gt=0, le=1, description="Region side / feature-map side (paper: 3/4).")
    hard_pair_stages: tuple[int, ...] = Field((1, 2), description="Stages after which HP crops (paper: after the first and second).")
    stage_head: HeadConfig = Field(default_factory=_stage_head, description="Projection head after stages 1 … n−1 (the method's own head serves the last stage); its out_dim must equal the method head's.")
