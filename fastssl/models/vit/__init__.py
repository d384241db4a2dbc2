"""The packed ViT: one encoder call for any mix of full, masked, resized, chunked and multi-crop views.

Read in this order: ``views`` (what a method asks for) → ``embed`` (patches, positions, chunk tokens)
→ ``packing`` / ``layout`` (many views as one token sequence and its offsets) → ``attention`` (the
backend rule: dense SDPA per run of equal lengths, varlen beyond) → ``blocks`` → ``model``
(``PackedViT``) → ``outputs`` (per-view results). ``cross_attention`` is M-MoCo's class-attention
head; ``chunks`` and ``pos_embed`` are helpers of ``embed``. Decisions: notes/vit.md.
"""
from fastssl.models.vit.cross_attention import ClassAttentionHead
from fastssl.models.vit.model import PackedViT
from fastssl.models.vit.outputs import Encoded, Features, ViewOutput, split_per_view
from fastssl.models.vit.packing import PackInfo
from fastssl.models.vit.views import ChunkedView, ImageView, MaskedView, View

__all__ = ["PackedViT", "ImageView", "MaskedView", "ChunkedView", "View", "Encoded", "ViewOutput", "Features",
           "PackInfo", "ClassAttentionHead", "split_per_view"]
