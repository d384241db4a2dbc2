"""Backbones and heads.

Packed ViT (one forward for any mix of views): ``PackedViT``, the view types ``ImageView``,
``MaskedView``, ``ChunkedView``; results ``Encoded`` / ``ViewOutput`` / ``Features``; M-MoCo's
``ClassAttentionHead`` — the sub-package ``fastssl.models.vit``. See notes/vit.md.
"""
from fastssl.models.vit import (ChunkedView, ClassAttentionHead, Encoded, Features, ImageView, MaskedView, PackInfo,
                                PackedViT, View, ViewOutput, split_per_view)

__all__ = ["PackedViT", "ImageView", "MaskedView", "ChunkedView", "View", "Encoded", "ViewOutput", "Features",
           "PackInfo", "ClassAttentionHead", "split_per_view"]
