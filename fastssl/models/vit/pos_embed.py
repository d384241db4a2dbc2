"""Positional embeddings for a patch grid other than the one the ViT was built for.

Resized views (DAC's down-sampled view, multi-crop's small crops) have an ``h × w`` patch grid
smaller than the native ``H × W`` one. Their positional table is the native table, seen as an
image with D channels, resampled bicubically with anti-aliasing (timm's ``resample_abs_pos_embed``
defaults, which is what timm does for ``dynamic_img_size`` models and when loading a checkpoint at
another resolution). The CLS embedding is not spatial and is left alone. Differentiable: the
gradient of the resampled table flows back to the native one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_patch_pos(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """pos ``[H*W, D]`` (row-major patch positions, no CLS) -> ``[h*w, D]``.

    Returns ``pos`` itself when the grids are equal. Interpolation runs in fp32 (``F.interpolate``
    bicubic has no bf16 kernel on every device) and the result is cast back to ``pos.dtype``.
    """
    (gh, gw), (nh, nw) = old_grid, new_grid
    if pos.ndim != 2 or pos.shape[0] != gh * gw:
        raise ValueError(f"pos must be [{gh}*{gw}, D], got {tuple(pos.shape)}")
    if (gh, gw) == (nh, nw):
        return pos
    d = pos.shape[1]
    img = pos.float().reshape(1, gh, gw, d).permute(0, 3, 1, 2)  # [1, D, H, W]
    img = F.interpolate(img, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    return img.permute(0, 2, 3, 1).reshape(nh * nw, d).to(pos.dtype)
