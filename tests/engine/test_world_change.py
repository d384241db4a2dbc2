"""Resume on another rank count (issue 13, case 11), unit level: the config adaptation and the refusals.

The end-to-end case (2 ranks killed through their launcher, resumed on 1) is in test_reliability_runs.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from _helpers import layout_only_folder

from fastssl.config import ConfigError, TrainConfig
from fastssl.engine import world_change
from fastssl.engine.checkpoint import SHAPE_FILE, TrainState


def cfg(tmp_path, batch=8, accum=1, stage=0) -> TrainConfig:
    layout_only_folder(tmp_path / "d")
    return TrainConfig.model_validate({
        "run": {"output_dir": str(tmp_path / "run")}, "data": {"dataset": "folder", "root": str(tmp_path / "d")},
        "model": {"arch": "test_vit", "patch_size": 4},
        "optim": {"batch_size": batch, "grad_accum": accum}, "engine": {"zero_stage": stage}})


def checkpoint(tmp_path, world, global_batch, stage=0) -> Path:
    folder = tmp_path / "run" / "checkpoints" / "step3"
    folder.mkdir(parents=True)
    (folder / SHAPE_FILE).write_text(json.dumps({"world_size": world, "global_batch": global_batch, "zero_stage": stage}))
    return folder


def test_same_rank_count_changes_nothing(tmp_path):
    c = cfg(tmp_path)
    assert world_change.adapt(c, checkpoint(tmp_path, 2, 16), 2) is c
    assert world_change.adapt(c, None, 4) is c


@pytest.mark.parametrize("saved, now, batch, accum", [(2, 1, 8, 2), (1, 2, 4, 1), (4, 2, 4, 4)])
def test_global_batch_is_kept_through_grad_accum(tmp_path, saved, now, batch, accum):
    global_batch = 8 * saved if saved != 4 else 32
    out = world_change.adapt(cfg(tmp_path, batch=batch), checkpoint(tmp_path, saved, global_batch), now)
    assert out.optim.grad_accum == accum and out.optim.batch_size * out.optim.grad_accum * now == global_batch


def test_a_global_batch_that_does_not_divide_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="global batch of 16 on 2 ranks; on 1 ranks optim.batch_size must divide 16 .*add optim.batch_size=4 to the command"):
        world_change.adapt(cfg(tmp_path, batch=5), checkpoint(tmp_path, 2, 16), 1)


def test_sharded_zero_stages_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="ZeRO stage 2; resuming it on 1 ranks is supported with ZeRO stage 0 only"):
        world_change.adapt(cfg(tmp_path, stage=2), checkpoint(tmp_path, 2, 16, stage=2), 1)


def test_skip_to_moves_the_loader_past_the_samples_done():
    class Loader:
        def __init__(self):
            self.step = 0

        def __iter__(self):
            while self.step < 6:
                self.step += 1
                yield self.step

    loader = Loader()
    assert world_change.skip_to(loader, TrainState(global_step=8, epoch=2, step_in_epoch=2), grad_accum=2) == 4
    assert list(loader) == [5, 6]  # the epoch ends where it would have
