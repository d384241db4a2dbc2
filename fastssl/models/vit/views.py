"""What a method asks the ViT to encode: typed descriptions of views, one class per kind.

All images are ``[B, C, H, W]`` with H and W multiples of the patch size; the patch grid of a view
is ``(H/p, W/p)``. A grid other than the ViT's native one (a resized view, a small multi-crop
crop) gets bicubically resampled positional embeddings (``pos_embed.resample_patch_pos``).

| view            | sequences per image  | tokens per sequence                      |
|-----------------|----------------------|------------------------------------------|
| ``ImageView``   | 1                    | [CLS] + all h·w patches                  |
| ``MaskedView``  | 1                    | [CLS] + the K kept patches (``ids_keep``) |
| ``ChunkedView`` | n (chunk-major)      | [CLS] + one chunk of the shuffled patches |
| ``PatchesView`` | 1                    | [CLS] + K given patch vectors (``ids_keep``) |

``cls=False`` drops the CLS token of every sequence of that view.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class ImageView:
    """A whole image (any grid size): full views, DAC's resized view, multi-crop crops."""

    images: torch.Tensor
    cls: bool = True


@dataclass(frozen=True, eq=False)
class MaskedView:
    """Only the kept patches are encoded (MAE / CAN / DAC). ``ids_keep [B, K]`` indexes the view's
    patch grid (row-major), in the order the tokens are wanted (MAE keeps its shuffled order)."""

    images: torch.Tensor
    ids_keep: torch.Tensor
    cls: bool = True


@dataclass(frozen=True, eq=False)
class ChunkedView:
    """M-MoCo / M-BYOL: the patches of each image shuffled (``perm [B, N]``, drawn uniformly when
    None) and sliced into ``n_chunks`` chunks, each encoded as an independent image with its own
    CLS. ``equal``: see ``chunks.py`` (default keeps every patch, chunk sizes differ by ≤ 1)."""

    images: torch.Tensor
    n_chunks: int = 8
    perm: torch.Tensor | None = None
    equal: bool = False
    cls: bool = True


@dataclass(frozen=True, eq=False)
class PatchesView:
    """A masked view whose kept patches arrive already cut out as pixel vectors (CAN's noisy kept
    patches from ``fastssl.ops.patchify_noise``): ``patches [B, K, p·p·C]`` in ``patchify``'s
    (p, q, c) order, ``ids_keep [B, K]`` their indices in the ``grid`` (rows, cols) of patches."""

    patches: torch.Tensor
    ids_keep: torch.Tensor
    grid: tuple[int, int]
    cls: bool = True


View = ImageView | MaskedView | ChunkedView | PatchesView


def view_batch(view: View) -> int:
    """Images in the view's batch."""
    return (view.patches if isinstance(view, PatchesView) else view.images).shape[0]
