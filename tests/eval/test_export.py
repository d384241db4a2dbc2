"""The exported encoder loads into timm.create_model(..., num_classes=0) with strict=True and computes the same."""
import timm
import torch

from fastssl.eval.export import encoder_state_dict, save_encoder
from fastssl.models.encoder import build_vit


def test_timm_round_trip(tmp_path):
    enc = build_vit("vit_tiny_patch16_224", img_size=28, patch_size=7)  # the trainer's PackedViT
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init: make sure real weights travel
    path = save_encoder(encoder_state_dict(enc), tmp_path / "encoder.pt")
    fresh = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=7, num_classes=0)
    fresh.load_state_dict(torch.load(path), strict=True)
    x = torch.randn(3, 3, 28, 28)
    enc.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), enc(x))
