"""fastssl.engine.sync_bn: BatchNorm becomes SyncBatchNorm exactly on CUDA with several ranks."""
import pytest
import torch
from torch import nn

from fastssl.engine.sync_bn import convert_sync_batchnorm, needs_sync_batchnorm


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), nn.LayerNorm(7))


def _kinds(m: nn.Module) -> list[type]:
    return [type(x) for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("device,world,expected", [
    ("cuda", 2, True), ("cuda:1", 8, True), ("cuda", 1, False), ("cpu", 2, False), ("cpu", 1, False),
    ("meta", 4, False),
])
def test_decision(device, world, expected):
    assert needs_sync_batchnorm(torch.device(device), world) is expected


@pytest.mark.parametrize("device,world", [("cpu", 1), ("cpu", 4), ("cuda", 1)])
def test_unchanged_otherwise(device, world):
    model = _model()
    out = convert_sync_batchnorm(model, torch.device(device), world)
    assert out is model
    assert _kinds(out) == [nn.BatchNorm1d, nn.BatchNorm2d]


def test_converts_on_cuda_with_several_ranks():
    """The conversion itself needs no GPU; every BatchNorm (nested too) becomes SyncBatchNorm with its
    parameters and running statistics, and nothing else changes."""
    model = _model()
    bn1, bn2 = model[1], model[3][1]
    with torch.no_grad():
        for bn in (bn1, bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    bn1.num_batches_tracked.fill_(3)
    out = convert_sync_batchnorm(model, torch.device("cuda", 0), world_size=2)
    assert _kinds(out) == [nn.SyncBatchNorm, nn.SyncBatchNorm]
    assert isinstance(out[0], nn.Linear) and isinstance(out[4], nn.LayerNorm)
    for old, new in ((bn1, out[1]), (bn2, out[3][1])):
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(new, name), getattr(old, name), rtol=0, atol=0)
        assert (new.eps, new.momentum, new.affine) == (old.eps, old.momentum, old.affine)


def test_rejects_bad_world_size():
    with pytest.raises(ValueError):
        convert_sync_batchnorm(_model(), torch.device("cpu"), 0)
