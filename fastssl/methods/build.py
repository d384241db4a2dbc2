"""Build the configured method (backbone + heads) from a TrainConfig."""
from __future__ import annotations

from torch import nn

from fastssl.methods.simclr import SimCLR, SimCLRConfig
from fastssl.models.backbone import create_vit


def build_method(cfg) -> nn.Module:
    m = cfg.model
    encoder = create_vit(m.arch, img_size=m.img_size or cfg.data.image_size, patch_size=m.patch_size, drop_path_rate=m.drop_path_rate)
    if isinstance(cfg.method, SimCLRConfig):
        return SimCLR(encoder, cfg.method)
    raise TypeError(f"no builder for method config {type(cfg.method).__name__}")
