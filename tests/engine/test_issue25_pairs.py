"""Issue 25, class 4: checks that need two keys, at config time (one line, exit 2, before any work).

Through ``fastssl.train.main`` in this process: reaching the train loop fails the test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _config_cli import no_training, one_line_exit_2, write_tree  # noqa: F401 (autouse fixture)

from fastssl import train
from fastssl.config import load_config
from fastssl import config_pairs as pair_checks
from fastssl.engine.schedule import plan_steps


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs") / "ds"
    for split, n in (("train", 8), ("test", 4)):
        (root / split / "c0").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), i * 20, dtype=np.uint8)).save(root / split / "c0" / f"{i}.png")
    return root


def write_cfg(tmp_path: Path, data: Path, method: dict | None = None, **sections) -> Path:
    tree = {"run": {"output_dir": str(tmp_path / "run")}, "data": {"dataset": "folder", "root": str(data), "image_size": 16},
            "model": {"arch": "test_vit", "patch_size": 4}, "optim": {"batch_size": 4, "epochs": 10, "warmup_epochs": 1},
            "eval": {"knn_k": 2, "knn_extra": []}, "method": method or {"name": "simclr"}}
    return write_tree(tmp_path, tree, sections)


def refused(capsys, path: Path, *overrides: str) -> str:
    return one_line_exit_2(capsys, ["--config", str(path), *overrides])


# 16 px / patch 4 = 16 patches per image
@pytest.mark.parametrize("method, overrides, needle", [
    ({"name": "mae", "mask_ratio": 0.95}, [], "method.mask_ratio=0.95 keeps no patch of the 16 patches"),
    ({"name": "mae", "mask_ratio": 0.8}, ["model.patch_size=8"], "method.mask_ratio=0.8 keeps no patch of the 4 patches"),
    ({"name": "mae", "mask_ratio": 0.5}, ["model.patch_size=16"], "keeps no patch of the 1 patches"),
    ({"name": "can", "mask_ratio": 0.97}, [], "keeps no patch"),
    ({"name": "dac", "mask_ratio": 0.5}, [], "not a square number"),
    ({"name": "mmoco", "n_chunks": 17}, [], "method.n_chunks=17 is more chunks than the image has patches (16"),
    ({"name": "mbyol", "n_chunks": 4, "target_chunks": 5}, ["model.patch_size=8"], "method.target_chunks=5 is more chunks than the image has patches (4"),
    ({"name": "simclr"}, ["optim.batch_size=1"], "method simclr takes its negatives from the other images of the batch"),
    ({"name": "mocov3"}, ["optim.batch_size=1"], "method mocov3 takes its negatives"),
    ({"name": "byol"}, ["optim.batch_size=1"], "method.projector normalises with BatchNorm"),
    ({"name": "simsiam"}, ["optim.batch_size=1"], "normalises with BatchNorm over the batch"),
    ({"name": "simclr"}, ["optim.epochs=5", "optim.warmup_epochs=5"], "optim.warmup_epochs=5 is not shorter than optim.epochs=5"),
    ({"name": "simclr"}, ["optim.epochs=3"], None),  # the default warm-up (10 epochs) in a 3-epoch run
    ({"name": "swav", "freeze_prototypes_epochs": 2}, ["optim.epochs=2", "optim.warmup_epochs=0"], "method.freeze_prototypes_epochs=2 is not shorter"),
    ({"name": "mocov2", "queue_size": 102}, [], "method.queue_size=102 must be a multiple of the 4 keys enqueued per step (optim.batch_size=4); use method.queue_size=100"),
    ({"name": "swav", "queue_length": 10, "freeze_prototypes_epochs": 0}, [], "method.queue_length=10 must be a multiple of the 4 keys"),
    ({"name": "swav", "queue_length": 8, "queue_start_epoch": 10, "freeze_prototypes_epochs": 0}, [], "method.queue_start_epoch=10 is not before optim.epochs=10"),
])
def test_two_key_mistakes_are_one_line_before_any_work(tmp_path, data, capsys, method, overrides, needle):
    path = write_cfg(tmp_path, data, method)
    if needle is None:  # the default warm-up against a short run
        path = tmp_path / "short.yaml"
        tree = json.loads(write_cfg(tmp_path, data, method).read_text())
        del tree["optim"]["warmup_epochs"]
        path.write_text(json.dumps(tree))
        needle = "optim.warmup_epochs=10 is not shorter than optim.epochs=3"
    assert needle in refused(capsys, path, *overrides)


@pytest.mark.parametrize("method, overrides", [
    ({"name": "mae", "mask_ratio": 0.9}, []),  # keeps 1 of 16
    ({"name": "mae", "mask_ratio": 0.001}, []),  # keeps 15 of 16: K rounds down, so one patch is masked
    ({"name": "mae", "mask_ratio": 0.75}, ["optim.batch_size=1"]),  # MAE needs no batch statistics
    ({"name": "mmoco", "n_chunks": 16}, []),
    ({"name": "mbyol"}, ["optim.batch_size=1"]),  # LayerNorm heads, no negatives
    ({"name": "byol"}, ["optim.batch_size=1", "method.projector.norm=layernorm", "method.predictor.norm=layernorm"]),
    ({"name": "simclr"}, ["optim.epochs=1", "optim.warmup_epochs=0.5"]),
    ({"name": "simclr"}, ["optim.epochs=1", "optim.max_steps=3"]),  # in steps: set-up says if the warm-up is cut
    ({"name": "simclr"}, ["model.arch=test_resnet", "model.small_stem=true", "optim.batch_size=2"]),
    ({"name": "mocov2", "queue_size": 96}, []),
    ({"name": "swav", "queue_length": 8, "queue_start_epoch": 2, "freeze_prototypes_epochs": 0}, []),
])
def test_settings_that_work_pass(tmp_path, data, method, overrides):
    cfg = load_config(write_cfg(tmp_path, data, method), overrides)  # no ConfigError, and the settings hold
    assert {k: getattr(cfg.method, k) for k in method} == method
    for item in overrides:
        key, value = item.split("=", 1)
        got = cfg
        for part in key.split("."):
            got = getattr(got, part)
        assert str(got).lower() == value, item


def test_a_warm_up_cut_by_max_steps_is_said_in_one_line(tmp_path, data):
    cfg = load_config(write_cfg(tmp_path, data), ["optim.max_steps=3", "optim.warmup_epochs=2"])
    plan = plan_steps(images_per_epoch=64, micro_batch=4, grad_accum=1, world_size=1, epochs=10, max_steps=3,
                      warmup_epochs=2, base_lr=1e-3)
    note = pair_checks.shortened_warmup(cfg, plan)
    assert note == "optim.warmup_epochs=2 is 32 steps but optim.max_steps=3 ends the run first: the warm-up is shortened to 2 steps"
    long_run = plan_steps(images_per_epoch=64, micro_batch=4, grad_accum=1, world_size=1, epochs=10, max_steps=100,
                          warmup_epochs=2, base_lr=1e-3)
    assert pair_checks.shortened_warmup(cfg, long_run) is None


def test_the_queue_against_the_rank_count_at_set_up(tmp_path, data):
    from fastssl.config import ConfigError
    from fastssl.engine import preflight

    cfg = load_config(write_cfg(tmp_path, data, {"name": "mocov2", "queue_size": 12}))  # 12 = 3 × 4: fine on 1 rank
    preflight.check_batches(cfg, 8, 1)
    with pytest.raises(ConfigError, match=r"method.queue_size=12 must be a multiple of the 8 keys enqueued per step \(optim.batch_size=4 × 2 ranks\); use method.queue_size=8"):
        preflight.check_batches(cfg, 16, 2)
    per_rank = load_config(write_cfg(tmp_path, data, {"name": "mocov2", "queue_size": 12, "gather_distributed": False}))
    preflight.check_batches(per_rank, 16, 2)
