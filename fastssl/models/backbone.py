"""Backbones from timm by name, so exported weights load into ``timm.create_model`` unchanged."""
from __future__ import annotations

import fastssl  # noqa: F401  (torchvision shim before timm)
import timm
from torch import nn


def create_vit(arch: str, *, img_size: int, patch_size: int, drop_path_rate: float = 0.0) -> nn.Module:
    """A timm ViT with no classifier: ``model(x [B,3,H,W]) -> [B, embed_dim]`` (the CLS token, timm's default pool).

    ``model.num_features`` is the embedding width. Raises ValueError naming the arch if timm lacks it.
    """
    if arch not in timm.list_models(arch):
        raise ValueError(f"model.arch: timm has no model named {arch!r}")
    return timm.create_model(arch, pretrained=False, img_size=img_size, patch_size=patch_size, num_classes=0, drop_path_rate=drop_path_rate)
