"""The eager reference of the masked-image methods: ViT blocks on dense ``[N, T, D]`` batches with
plain ``scaled_dot_product_attention``, and MAE's own encoder input (conv patch embedding of every
patch, add the positional table, then gather the kept tokens) — what a user of MAE's official
``models_mae.py`` runs. It uses the *same modules* (weights) as the packed path, so one model can
be run both ways and compared loss for loss and gradient for gradient.

Every sequence of these methods' views has the same length (MAE/CAN: 1 + K; DAC's resized view
has 1 + K tokens too), so the dense batch needs no padding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.models.pos_embed import resample_patch_pos
from fastssl.ops import reference


def dense_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``Attention`` maths with a ``PackedAttention``'s weights: ``[N, T, D] -> [N, T, D]``."""
    n, t, d = x.shape
    qkv = attn.qkv(x).view(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [N, H, T, Dh]
    return attn.proj(o.transpose(1, 2).reshape(n, t, d))


def dense_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Pre-norm ViT blocks (``PackedBlock`` weights) on ``[N, T, D]``; no stochastic depth."""
    for blk in blocks:
        if blk.drop_path and blk.training:
            raise ValueError("the eager reference runs without stochastic depth (model.drop_path_rate: 0)")
        x = x + blk.ls1(dense_attention(blk.attn, blk.norm1(x)))
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return x


def eager_encode(vit: nn.Module, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
    """MAE's ``forward_encoder`` with a ``PackedViT``'s weights: ``images [N, C, H, W]`` (any grid of
    the patch size; other grids get the resampled table) -> ``[N, 1 + K, D]`` after the final norm,
    CLS first, kept tokens in ``ids_keep`` order (all patches when None)."""
    p = vit.patch_size
    x = F.conv2d(images, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=p)  # [N, D, h, w]
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)
    pos = resample_patch_pos(vit.pos_embed[0, 1:], vit.grid, grid)
    x = x + pos.unsqueeze(0)
    if ids_keep is not None:
        x = reference.gather_tokens(x, ids_keep)
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    return vit.norm(dense_blocks(vit.blocks, torch.cat([cls.to(x.dtype), x], dim=1)))
