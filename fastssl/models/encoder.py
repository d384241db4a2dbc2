"""The encoders of the trainer, built from a timm architecture name: ``build_encoder`` picks the family.

ViT: every ViT method encodes through ``PackedViT`` (one packed forward for any mix of full, masked,
resized, chunked and multi-crop views); its ``state_dict`` loads into the timm model of the same
name with ``strict=True``, so ``encoder.pt`` is a timm checkpoint.
ResNet: ``ResNetTaps`` (``models/resnet.py``), timm's ResNet with each stage's output reachable;
its ``state_dict`` is timm's (with the small stem, ``conv1`` has the small stem's shape: see there).
"""
from __future__ import annotations

from typing import Literal

from fastssl.models.resnet import ResNetTaps
from fastssl.models.vit.model import PackedViT

RESNET_PREFIXES = ("resnet", "test_resnet", "wide_resnet", "resnext")
VIT_PREFIXES = ("vit_", "test_vit")


def encoder_family(arch: str) -> Literal["vit", "resnet"]:
    """Which encoder a timm name builds; one-line ValueError for any other family."""
    if arch.startswith(VIT_PREFIXES):
        return "vit"
    if arch.startswith(RESNET_PREFIXES):
        return "resnet"
    raise ValueError(f"{arch!r} is neither a timm ViT (vit_tiny_patch16_224 …) nor a timm ResNet (resnet18, resnet50 …)")


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


def build_encoder(model_cfg, image_size: int):
    """The encoder ``model_cfg`` (a ``ModelConfig``) describes, for images of ``image_size`` px:
    a ``PackedViT`` or a ``ResNetTaps``; both map ``[B, 3, S, S] → [B, num_features]``."""
    m = model_cfg
    if encoder_family(m.arch) == "resnet":
        return ResNetTaps.from_timm(m.arch, small_stem=m.small_stem, drop_path_rate=m.drop_path_rate)
    vit = build_vit(m.arch, img_size=m.img_size or image_size, patch_size=m.patch_size,
                    drop_path_rate=m.drop_path_rate, attn_backend=m.attn_backend)
    if m.freeze_patch_embed:
        # MoCo v3 (Chen et al. 2021, Sec. 4.2): a fixed random patch projection avoids the training
        # instability that starts in the first layer. Frozen parameters leave every method's
        # parameter groups (``trainable``) and so the optimizer; EMA copies keep them equal.
        vit.patch_embed.requires_grad_(False)
    return vit
