"""Resized views: positional embeddings resampled bicubically, as timm does."""
from __future__ import annotations

import pytest
import timm
import torch
from _vit_ref import tiny_timm
from timm.layers import resample_abs_pos_embed

from fastssl.models import ImageView, PackedViT
from fastssl.models.vit.pos_embed import resample_patch_pos


@pytest.mark.parametrize("old,new", [((8, 8), (7, 7)), ((8, 8), (3, 5)), ((14, 14), (6, 6)), ((5, 5), (9, 9)), ((8, 8), (8, 8))])
def test_resample_matches_timm_with_grads(old, new):
    pos = torch.randn(1, 1 + old[0] * old[1], 24, requires_grad=True)
    ref = resample_abs_pos_embed(pos, new_size=list(new), old_size=list(old), num_prefix_tokens=1)[0, 1:]
    ours = resample_patch_pos(pos[0, 1:], old, new)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    g = torch.randn_like(ref)
    (g1,) = torch.autograd.grad(ours, pos, g)
    (g2,) = torch.autograd.grad(ref, pos, g)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("hw", [(16, 16), (28, 20), (32, 32)])
def test_resized_view_equals_timm_dynamic_img_size(hw):
    t = tiny_timm(depth=2).eval()
    dyn = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=0, depth=2, embed_dim=48,
                            num_heads=3, dynamic_img_size=True).eval()
    dyn.load_state_dict(t.state_dict(), strict=True)
    vit = PackedViT.from_timm(t).eval()
    x = torch.randn(2, 3, *hw)
    out = vit.encode([ImageView(x)])
    ref = dyn.forward_features(x)
    torch.testing.assert_close(out.views[0].cls, ref[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.views[0].final.dense(), ref[:, 1:], atol=1e-5, rtol=1e-5)
    assert out.views[0].slot.grid == (hw[0] // 4, hw[1] // 4)
