"""ResNetTaps: timm's ResNet computed stage by stage; the small stem; the exported weights load into
timm with strict=True (the small stem through ``load_timm_encoder``); the config picks the family."""
from pathlib import Path

import timm
import pytest
import torch

from fastssl.config import ConfigError, load_config
from fastssl.eval.export import encoder_state_dict, export_spec, load_timm_encoder, save_encoder
from fastssl.models.resnet import ResNetTaps


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init: real weights must travel


@pytest.mark.parametrize("arch", ["test_resnet", "resnet18"])
def test_stages_compose_to_timms_forward(arch):
    enc = ResNetTaps.from_timm(arch)
    _perturb(enc)
    ref = timm.create_model(arch, num_classes=0)
    ref.load_state_dict(enc.state_dict(), strict=True)  # the standard stem is timm's, key for key
    enc.eval(), ref.eval()
    x = torch.randn(3, 3, 19, 19)  # odd size
    maps = enc.forward_stages(x)
    assert [m.shape[1] for m in maps] == list(enc.stage_channels) and enc.stage_channels[-1] == enc.num_features
    torch.testing.assert_close(enc.pool(maps[-1]), ref(x))
    torch.testing.assert_close(enc(x), ref(x))


def test_small_stem_keeps_the_resolution_and_exports(tmp_path):
    enc = ResNetTaps.from_timm("resnet18", small_stem=True)
    _perturb(enc)
    enc.eval()
    x = torch.randn(1, 3, 28, 28)
    assert enc.conv1.weight.shape == (64, 3, 3, 3)
    assert [tuple(m.shape[1:]) for m in enc.forward_stages(x)] == [(64, 28, 28), (128, 14, 14), (256, 7, 7), (512, 4, 4)]
    path = save_encoder(encoder_state_dict(enc), tmp_path / "encoder.pt", export_spec(enc))
    with pytest.raises(RuntimeError):  # a stock timm model does not take the small stem's conv1
        timm.create_model("resnet18", num_classes=0).load_state_dict(torch.load(path), strict=True)
    fresh = load_timm_encoder(path).eval()
    torch.testing.assert_close(fresh(x), enc(x))


def test_deep_stem_loses_its_stride():
    enc = ResNetTaps.from_timm("test_resnet", small_stem=True)  # conv1 is a Sequential of 3×3 convs
    assert enc.stem(torch.randn(1, 3, 16, 16)).shape[-1] == 16


def test_config_selects_the_family(tmp_path):
    # Only the model section is under test. The config's data section would otherwise look for
    # Fashion-MNIST (data/fashion-mnist or the Debian package's files), which the GPU machine does
    # not have: there every load_config below failed with that data error instead. Synthetic data
    # reads no files, and the missing source folder makes this machine look like that one.
    root = Path(__file__).resolve().parents[2] / "configs" / "fmnist" / "simclr.yaml"
    no_data = ["data.synthetic=true", "eval.enabled=false", f"data.root={tmp_path / 'none'}", f"data.source={tmp_path / 'none'}"]
    cfg = load_config(root, [*no_data, "model.arch=resnet18", "model.small_stem=true"])
    assert cfg.model.small_stem
    with pytest.raises(ConfigError, match="model.small_stem applies to ResNets only"):
        load_config(root, [*no_data, "model.small_stem=true"])
    with pytest.raises(ConfigError, match="neither a timm ViT"):
        load_config(root, [*no_data, "model.arch=convnext_tiny"])
    with pytest.raises(ConfigError, match="not a timm ResNet"):
        load_config(root, [*no_data, "model.arch=resnet_nonsense"])
