"""PackedViT <-> timm VisionTransformer: state_dict both ways (strict) and equal outputs on images."""
from __future__ import annotations

import pytest
import timm
import torch
from _vit_ref import tiny_timm

from fastssl.models import PackedViT


@pytest.mark.parametrize("kw", [dict(), dict(init_values=0.1, qkv_bias=False), dict(mlp_ratio=2.0)], ids=["plain", "layerscale-nobias", "mlp2"])
def test_state_dict_round_trip_and_equal_outputs(kw):
    t = tiny_timm(depth=2, **kw).eval()
    vit = PackedViT.from_timm(t).eval()
    assert set(vit.state_dict()) == set(t.state_dict())
    back = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=0, depth=2, embed_dim=48,
                             num_heads=3, **kw)
    back.load_state_dict(vit.state_dict(), strict=True)
    for k, v in t.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    for b in (1, 3):
        x = torch.randn(b, 3, 32, 32)
        torch.testing.assert_close(vit.forward_features(x), t.forward_features(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vit(x), t(x), atol=1e-5, rtol=1e-5)


def test_fresh_model_exports_to_timm_with_equal_outputs():
    vit = PackedViT(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, weight_init="moco").eval()
    t = vit.to_timm().eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(vit(x), t(x), atol=1e-5, rtol=1e-5)
    t2 = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=0, depth=2, embed_dim=48, num_heads=3)
    t2.load_state_dict(vit.state_dict(), strict=True)


def test_from_timm_by_name():
    vit = PackedViT.from_timm("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=1)
    assert vit.config["embed_dim"] == 192 and vit.config["num_heads"] == 3 and vit.grid == (8, 8)


@pytest.mark.parametrize("kw,match", [(dict(reg_tokens=1), "register"), (dict(global_pool="avg"), "global_pool"),
                                      (dict(no_embed_class=True), "no_embed_class"), (dict(qk_norm=True), "non-standard")])
def test_unsupported_timm_configs_are_rejected(kw, match):
    t = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=0, depth=1, **kw)
    with pytest.raises(ValueError, match=match):
        PackedViT.from_timm(t)
