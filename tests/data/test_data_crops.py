"""Per-method crops from the one DALI pipeline: declared shapes, per-crop recipes, resized copies,
distinct augmentation per copy, and crops in the resume fingerprint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastssl.data import AugmentConfig, DataConfig
from fastssl.data.crops import CropSpec, check_crops
from fastssl.data.loader import TrainLoader

from _data_tiny import SIDE


def _cfg(root, **aug) -> DataConfig:
    return DataConfig(dataset="folder", root=root, image_size=SIDE, augment=AugmentConfig(**aug))


def test_multi_crop_shapes_and_distinct_copies(tiny_folder):
    crops = (CropSpec("global", count=2, scale=(0.3, 1.0)), CropSpec("local", count=3, size=12, scale=(0.05, 0.3)),
             CropSpec("plain", recipe="light"))
    loader = TrainLoader(_cfg(tiny_folder), batch_size=7, seed=3, crops=crops)
    b = next(iter(loader))
    assert set(b.crops) == {"global", "local", "plain"}
    assert b["global"].shape == (2, 7, 3, SIDE, SIDE)
    assert b["local"].shape == (3, 7, 3, 12, 12)
    assert b["plain"].shape == (1, 7, 3, SIDE, SIDE)
    for name, t in b.crops.items():
        assert t.dtype == torch.float32 and torch.isfinite(t).all(), name
    # every copy of an image is its own random crop and augmentation
    for t in (b["global"], b["local"]):
        for i in range(t.shape[0]):
            for j in range(i + 1, t.shape[0]):
                assert ((t[i] - t[j]).flatten(1).abs().amax(1) > 1e-3).all()
    with pytest.raises(KeyError, match="no crop 'views'"):
        b["views"]


def test_light_recipe_is_crop_and_flip_only(tiny_folder):
    # Colour jitter and grey always on: a "strong" crop changes the pixels, a "light" one must not.
    cfg = _cfg(tiny_folder, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=1.0, grayscale_p=1.0,
               blur_p=(1.0, 1.0), solarize_p=(1.0, 1.0))
    crops = (CropSpec("light", recipe="light"), CropSpec("strong"))
    loader = TrainLoader(cfg, batch_size=8, seed=4, crops=crops)
    from PIL import Image

    for b in loader:
        for j, i in enumerate(b.index.tolist()):
            img = np.array(Image.open(loader.files[i]).convert("RGB")).astype(np.float64) / 255.0
            ref = ((img - np.array(cfg.mean)) / np.array(cfg.std)).transpose(2, 0, 1)
            np.testing.assert_allclose(b["light"][0, j].double().numpy(), ref, atol=1e-4)
            assert np.abs(b["strong"][0, j].double().numpy() - ref).max() > 0.05


def test_resize_of_is_the_same_crop_resized_with_the_same_flip(tiny_folder):
    cfg = _cfg(tiny_folder, flip_p=0.5)
    crops = (CropSpec("full", count=2, scale=(0.2, 1.0)), CropSpec("small", count=2, size=14, resize_of="full"))
    loader = TrainLoader(cfg, batch_size=8, seed=5, crops=crops)
    b = next(iter(loader))
    assert b["small"].shape == (2, 8, 3, 14, 14)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    for c in range(2):
        levels = b["full"][c] * std + mean  # normalisation is per pixel: resizing commutes with it
        ref = F.interpolate(levels, size=(14, 14), mode="bilinear", antialias=True, align_corners=False)
        got = b["small"][c] * std + mean
        # DALI resizes uint8 pixels (rounding) with its own antialiased filter: compare in grey levels
        err = (got - ref).abs().mul(255).flatten(1).amax(1)
        assert (err < 12).all(), err


def test_crops_are_checked_and_enter_the_resume_fingerprint(tiny_folder):
    with pytest.raises(ValueError, match="used twice"):
        check_crops([CropSpec("a"), CropSpec("a")])
    with pytest.raises(ValueError, match="earlier crop"):
        check_crops([CropSpec("b", resize_of="a"), CropSpec("a")])
    with pytest.raises(ValueError, match="identifier"):
        CropSpec("not a name")
    cfg = _cfg(tiny_folder)
    state = TrainLoader(cfg, batch_size=4, seed=0).state_dict()
    other = TrainLoader(cfg, batch_size=4, seed=0, crops=(CropSpec("views", count=2, size=16),))
    with pytest.raises(ValueError, match="crops"):
        other.load_state_dict(state)


def test_crop_false_is_the_whole_image_resized(tiny_folder):
    # No random crop, no flip, light recipe: the output must be the decoded image, resized, normalised.
    cfg = _cfg(tiny_folder, flip_p=0.0, crop_scale=(0.05, 0.1))  # a tiny crop scale that crop=False must ignore
    crops = (CropSpec("full"), CropSpec("small", size=11, crop=False, recipe="light"))
    loader = TrainLoader(cfg, batch_size=8, seed=6, crops=crops)
    from PIL import Image

    b = next(iter(loader))
    assert b["small"].shape == (1, 8, 3, 11, 11)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    for j, i in enumerate(b.index.tolist()):
        img = torch.from_numpy(np.array(Image.open(loader.files[i]).convert("RGB"))).permute(2, 0, 1).double() / 255.0
        ref = F.interpolate(img[None], size=(11, 11), mode="bilinear", antialias=True, align_corners=False)[0]
        got = (b["small"][0, j] * std + mean).double()
        err = (got - ref).abs().mul(255).amax()
        assert err < 12, err  # DALI's antialiased filter and uint8 rounding, in grey levels
    with pytest.raises(ValueError, match="crop=False"):
        CropSpec("x", crop=False, scale=(0.2, 1.0))
    with pytest.raises(ValueError, match="crop=False"):
        CropSpec("x", crop=False, resize_of="full")
