"""The one ViT of the trainer: a ``PackedViT`` built from a timm architecture name.

Every ViT method encodes through ``PackedViT`` (one packed forward for any mix of full, masked,
resized, chunked and multi-crop views); its ``state_dict`` loads into the timm model of the same
name with ``strict=True``, so ``encoder.pt`` is a timm checkpoint.
"""
from __future__ import annotations

from fastssl.models.vit import PackedViT


def build_vit(arch: str, *, img_size: int, patch_size: int, drop_path_rate: float = 0.0,
              attn_backend: str = "auto") -> PackedViT:
    """timm's hyper-parameters (width, depth, heads, MLP ratio, LayerScale) and initialisation for
    ``arch``, with the given image and patch size, as a ``PackedViT``. ``model.num_features`` is
    the embedding width; ``model(x [B,3,H,W]) -> [B, D]`` is timm's CLS pooling."""
    import fastssl  # noqa: F401  (torchvision shim before timm)
    import timm

    if arch not in timm.list_models(arch):
        raise ValueError(f"model.arch: timm has no model named {arch!r}")
    return PackedViT.from_timm(arch, attn_backend=attn_backend, img_size=img_size, patch_size=patch_size,
                               drop_path_rate=drop_path_rate)
