"""Issue 25, classes 1 and 3: splits whose class folders disagree, and output inside the data.

Both are refused at config time (one line, exit 2, through ``fastssl.train.main`` in this process)
and again at set-up (``preflight`` / ``run_dir``), where a folder changed after the config was read
or a prepared Fashion-MNIST folder is checked.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastssl import train
from fastssl.config import ConfigError, load_config
from fastssl.data.folder_checks import class_mismatch
from fastssl.engine import preflight


def png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)).save(path)


def folder(root: Path, train=("a", "b", "c"), test=("a", "b", "c"), empty=()) -> Path:
    for split, classes in (("train", train), ("test", test)):
        for k, c in enumerate(classes):
            for i in range(4 if split == "train" else 2):
                png(root / split / c / f"{i}.png", seed=k * 10 + i)
    for rel in empty:
        (root / rel).mkdir(parents=True, exist_ok=True)
    return root


def write_cfg(tmp_path: Path, data: Path, out: Path | None = None, **sections) -> Path:
    tree = {"run": {"output_dir": str(out or tmp_path / "run")}, "data": {"dataset": "folder", "root": str(data), "image_size": 16},
            "model": {"arch": "test_vit", "patch_size": 4}, "optim": {"batch_size": 4, "warmup_epochs": 0},
            "eval": {"knn_k": 2, "knn_extra": []}}
    for key, value in sections.items():
        tree.setdefault(key, {}).update(value)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(tree))
    return path


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    import fastssl.engine.loop as loop

    monkeypatch.setattr(loop, "run", lambda cfg: pytest.fail("the config was accepted and training started"))


def one_line_exit_2(capsys, argv) -> str:
    code = train.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("fastssl: config error:"), err
    return err


# ---- class 1: splits that disagree ------------------------------------------------------------------

@pytest.mark.parametrize("train_classes, test_classes, empty, needles", [
    (("a", "b", "c", "d"), ("a", "b", "c"), (), ["only in", "train: d"]),                     # extra class in train
    (("a", "b", "c"), ("a", "b", "c"), ("train/aa",), ["train: aa (empty)"]),                 # extra empty folder in train
    (("a", "b", "c"), ("a", "b", "c", "z"), (), ["test: z"]),                                 # extra class in test
    (("a", "b", "c"), ("a", "B", "c"), (), ["train: b", "test: B"]),                           # renamed (case) class
    (("a", "b"), ("a", "b", "c"), ("test/.hidden",), ["test: c"]),                            # hidden folders do not count
])
def test_splits_with_other_class_folders_are_one_line(tmp_path, capsys, train_classes, test_classes, empty, needles):
    data = folder(tmp_path / "ds", train_classes, test_classes, empty)
    err = one_line_exit_2(capsys, ["--config", str(write_cfg(tmp_path, data))])
    assert "class folders" in err and "differ" in err, err
    for needle in needles:
        assert needle in err, err


def test_same_class_folders_pass_even_with_an_empty_one_in_both(tmp_path):
    data = folder(tmp_path / "ds", empty=("train/zz", "test/zz", "train/.cache"))
    assert class_mismatch(data) is None
    load_config(write_cfg(tmp_path, data))


def test_a_folder_changed_after_the_config_is_refused_at_set_up(tmp_path):
    data = folder(tmp_path / "ds")
    cfg = load_config(write_cfg(tmp_path, data))
    (data / "test" / "b").rename(data / "test" / "b2")  # between reading the config and the set-up
    with pytest.raises(ConfigError, match=r"data.root: the class folders .* differ .*only in .*train: b"):
        preflight.prepare_data(cfg, 0, 1)


def test_set_up_returns_a_fingerprint_that_sees_a_changed_file(tmp_path):
    data = folder(tmp_path / "ds")
    cfg = load_config(write_cfg(tmp_path, data))
    n, before = preflight.prepare_data(cfg, 0, 1)
    assert n == 12 and before["train"]["images"] == 12 and before["test"]["classes"] == 3
    assert preflight.prepare_data(cfg, 0, 1)[1] == before  # same files: same fingerprint
    png(data / "train" / "a" / "new.png", seed=99)
    after = preflight.prepare_data(cfg, 0, 1)[1]
    assert after["train"] != before["train"] and after["test"] == before["test"]
