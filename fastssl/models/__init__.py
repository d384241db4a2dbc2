"""Backbones and heads.

Packed ViT (one forward for any mix of views): ``PackedViT``, the view types ``ImageView``,
``MaskedView``, ``ChunkedView``; results ``Encoded`` / ``ViewOutput`` / ``Features``; M-MoCo's
``ClassAttentionHead``. See notes/vit.md.
"""
from fastssl.models.cross_attention import ClassAttentionHead
from fastssl.models.outputs import Encoded, Features, ViewOutput, split_per_view
from fastssl.models.packing import PackInfo
from fastssl.models.views import ChunkedView, ImageView, MaskedView, View
from fastssl.models.vit import PackedViT

__all__ = ["PackedViT", "ImageView", "MaskedView", "ChunkedView", "View", "Encoded", "ViewOutput", "Features",
           "PackInfo", "ClassAttentionHead", "split_per_view"]
