"""Mistakes that must end in one line and exit 2, never a traceback (issue 13, cases 7 and 8).

Config-time cases go through ``fastssl.train.main`` in this process (it returns before any work);
the cases that need the data or the rank count are checked through ``preflight`` and ``ds_keys``
directly. ``test_reliability_runs.py`` runs two of them end to end.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _config_cli import no_training, one_line_exit_2, write_tree  # noqa: F401 (autouse fixture)

from fastssl import train
from fastssl.config import ConfigError, load_config
from fastssl import config_deepspeed as ds_keys
from fastssl.engine import preflight


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cfgdata") / "ds"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        (root / split / "c0").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / split / "c0" / f"{i}.png")
    return root


def write_cfg(tmp_path: Path, data: Path, **sections) -> Path:
    tree = {"run": {"output_dir": str(tmp_path / "run")}, "data": {"dataset": "folder", "root": str(data), "image_size": 16},
            "model": {"arch": "test_vit", "patch_size": 4}, "optim": {"batch_size": 4}, "eval": {"knn_k": 2, "knn_extra": []}}
    return write_tree(tmp_path, tree, sections)


def test_override_value_that_is_not_yaml(tmp_path, data, capsys):
    err = one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, data)), "optim.betas=[0.9,"])
    assert "optim.betas=[0.9," in err and "not valid YAML" in err


@pytest.mark.parametrize("override, needle", [
    ("optim.betas=[2,3]", "betas must each be in [0, 1)"),
    ("optim.base_lr=1e40", "beyond float32's range"),
    ("run.resume=/no/such/step9", "not a fastssl checkpoint folder"),
    ("deepspeed.train_micro_batch_size_per_gpu=8", "contradicts optim.batch_size=4"),
    ("deepspeed.train_batch_size=6", "contradicts optim.batch_size × optim.grad_accum"),
    ("data.dataset=fashion-mnist", "not a fastssl Fashion-MNIST folder"),
])
def test_bad_values_are_one_line(tmp_path, data, capsys, override, needle):
    assert needle in one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, data)), override])


def test_output_dir_that_is_a_file(tmp_path, data, capsys):
    (tmp_path / "f").write_text("x")
    assert "is a file" in one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, data)), f"run.output_dir={tmp_path / 'f'}"])


def test_output_dir_not_writable(tmp_path, data, capsys, monkeypatch):
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(tmp_path) else real(p, mode, **k))
    err = one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, data)), f"run.output_dir={tmp_path / 'new'}"])
    assert "not writable" in err


def test_train_without_class_folders_and_test_without_images(tmp_path, data, capsys):
    bad = tmp_path / "bad"
    (bad / "train").mkdir(parents=True)
    (bad / "test" / "c0").mkdir(parents=True)
    (bad / "train" / "loose.png").write_bytes(b"x")
    err = one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, bad))])
    assert "train has no class sub-folders" in err
    (bad / "train" / "c0").mkdir()
    (bad / "train" / "c0" / "a.png").write_bytes(b"x")
    assert "test holds no .png/.jpg images" in one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, bad))])


def test_batch_larger_than_the_data_set_and_grad_accum_without_a_step(tmp_path, data):
    cfg = load_config(write_cfg(tmp_path, data, optim={"batch_size": 16}))
    with pytest.raises(ConfigError, match=r"optim.batch_size=16 on 1 rank\(s\) needs at least 16 training images; .* has 8"):
        preflight.check_batches(cfg, 8, 1)
    cfg = load_config(write_cfg(tmp_path, data, optim={"batch_size": 4, "grad_accum": 3}))
    with pytest.raises(ConfigError, match="optim.grad_accum=3 leaves no optimizer step in an epoch"):
        preflight.check_batches(cfg, 8, 1)
    preflight.check_batches(load_config(write_cfg(tmp_path, data, optim={"batch_size": 4, "grad_accum": 2})), 8, 1)


def test_deepspeed_train_batch_size_against_the_rank_count(tmp_path, data):
    cfg = load_config(write_cfg(tmp_path, data, deepspeed={"train_batch_size": 8}))  # a multiple of 4: fine at config time
    preflight.check_batches(cfg, 8, 2)
    with pytest.raises(ConfigError, match=r"deepspeed.train_batch_size=8 contradicts .* = 4 × 1"):
        preflight.check_batches(cfg, 8, 1)


def test_unknown_deepspeed_keys_are_named(tmp_path, data, caplog):
    with caplog.at_level(logging.WARNING, logger="fastssl"):
        load_config(write_cfg(tmp_path, data, deepspeed={"zero_optimisation": {"stage": 1}, "bf16": {"enabld": True},
                                                         "gradient_clipping": 1.0}))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("deepspeed.zero_optimisation is not a DeepSpeed config key" in w and "zero_optimization" in w for w in warned)
    assert any("deepspeed.bf16.enabld" in w for w in warned)
    assert not any("gradient_clipping" in w for w in warned)
    assert {"train_batch_size", "zero_optimization", "bf16", "stage", "offload_optimizer"} <= ds_keys.known_keys()


def test_knn_k_larger_than_the_bank_says_so(tmp_path, data, caplog):
    cfg = load_config(write_cfg(tmp_path, data, eval={"knn_k": 200}))
    with caplog.at_level(logging.WARNING, logger="fastssl"):
        preflight.note_knn_bank(cfg, 8)
    assert any("k=200 is larger than the kNN memory bank (8 train images): the kNN uses k=8" in r.getMessage() for r in caplog.records)
