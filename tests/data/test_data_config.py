"""DataConfig / AugmentConfig: defaults, documentation, and the errors a user sees."""
from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from fastssl.data import AugmentConfig, DataConfig


def _all_fields_documented(model: type[BaseModel]) -> list[str]:
    return [name for name, f in model.model_fields.items() if not f.description]


def test_every_field_has_a_description():
    assert _all_fields_documented(DataConfig) == []
    assert _all_fields_documented(AugmentConfig) == []


def test_defaults_are_byol_recipe():
    a = AugmentConfig()
    assert a.crop_scale == (0.08, 1.0) and a.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert (a.flip_p, a.jitter_p, a.grayscale_p) == (0.5, 0.8, 0.2)
    assert (a.brightness, a.contrast, a.saturation, a.hue) == (0.4, 0.4, 0.2, 0.1)
    assert a.blur_p == (1.0, 0.1) and a.solarize_p == (0.0, 0.2) and a.blur_sigma == (0.1, 2.0)


def test_folder_root_missing_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValidationError) as err:
        DataConfig(dataset="folder", root=missing)
    assert str(missing) in str(err.value)


def test_folder_root_empty_names_the_path(tmp_path):
    with pytest.raises(ValidationError) as err:
        DataConfig(dataset="folder", root=tmp_path)
    assert str(tmp_path) in str(err.value) and "empty" in str(err.value)


def test_folder_root_without_test_split(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValidationError, match="test/"):
        DataConfig(dataset="folder", root=tmp_path)


def test_folder_root_ok(tiny_folder):
    cfg = DataConfig(dataset="folder", root=tiny_folder)
    assert cfg.root == tiny_folder


def test_fashion_mnist_without_source_says_how_to_install(tmp_path):
    with pytest.raises(ValidationError, match="apt-get install dataset-fashion-mnist"):
        DataConfig(root=tmp_path / "fm", source=tmp_path / "no-idx-here")


@pytest.mark.parametrize(
    "bad",
    [
        {"flip_p": 1.5},
        {"blur_p": (1.0, -0.1)},
        {"crop_scale": (0.5, 0.2)},
        {"crop_scale": (0.0, 1.0)},
        {"hue": 0.7},
        {"blur_sigma": (2.0, 0.1)},
        {"unknown_key": 1},
    ],
)
def test_bad_augment_values_rejected(bad):
    with pytest.raises(ValidationError):
        AugmentConfig(**bad)


def test_pairs_parse_from_yaml_lists_and_extra_keys_rejected(tiny_folder):
    cfg = DataConfig.model_validate(
        {"dataset": "folder", "root": str(tiny_folder), "augment": {"blur_p": [0.5, 0.5], "solarize_p": [0, 0]}}
    )
    assert cfg.augment.blur_p == (0.5, 0.5) and cfg.augment.solarize_p == (0.0, 0.0)
    with pytest.raises(ValidationError):
        DataConfig.model_validate({"dataset": "folder", "root": str(tiny_folder), "batch": 3})
    with pytest.raises(ValidationError):
        DataConfig(dataset="folder", root=tiny_folder, decode="gpu")
