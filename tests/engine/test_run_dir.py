"""The output directory rules (issue 13, cases 1, 2, 7 "changed arch/batch/seed", 10): unit level, no training.

``run_dir.prepare`` is called as the loop calls it (rank 0, no process group); the lock holder is a
real second process, so the refusal is the OS's, as between two runs.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import layout_only_folder

from fastssl.config import ConfigError, TrainConfig
from fastssl.engine import resume_rules, run_dir


def make_cfg(out: Path, data: Path, **sections) -> TrainConfig:
    tree = {"run": {"output_dir": str(out), "seed": 1}, "data": {"dataset": "folder", "root": str(data)},
            "model": {"arch": "test_vit", "patch_size": 4}, "optim": {"batch_size": 16}}
    for key, value in sections.items():
        tree.setdefault(key, {}).update(value)
    return TrainConfig.model_validate(tree)


@pytest.fixture
def data(tmp_path) -> Path:
    return layout_only_folder(tmp_path / "data", "c0")


def used_run(out: Path, cfg: TrainConfig, steps=(4, 8)) -> None:
    """What a run leaves behind: checkpoints, metrics, config."""
    from fastssl.config import dump_config

    for s in steps:
        (out / "checkpoints" / f"step{s}").mkdir(parents=True)
        (out / "checkpoints" / f"step{s}" / "rank0.pt").write_bytes(b"x")
    (out / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 1.0}\n')
    (out / "config.yaml").write_text(dump_config(cfg))


@pytest.fixture(autouse=True)
def release_locks():
    yield
    for f in list(run_dir._held):
        run_dir.release_lock(f)


def test_second_run_on_the_same_directory_is_refused_naming_the_holder(tmp_path, data):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from fastssl.engine import run_dir; "
        f"run_dir.acquire_lock(Path({str(out)!r})); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError) as err:
            run_dir.prepare(make_cfg(out, data), rank=0)
        msg = str(err.value)
        assert f"pid {holder.pid} on host" in msg and "\n" not in msg and "another run.output_dir" in msg
    finally:
        holder.kill()  # a kill -9: the kernel drops the lock with the process
        holder.wait()
    run_dir.prepare(make_cfg(out, data), rank=0)  # free again at once
    assert f"pid {__import__('os').getpid()}" in (out / run_dir.LOCK_NAME).read_text()


def test_fresh_start_moves_the_old_run_aside(tmp_path, data):
    out = tmp_path / "run"
    cfg = make_cfg(out, data)
    used_run(out, cfg)
    moved = run_dir.prepare(make_cfg(out, data, run={"resume": "never"}), rank=0)
    assert moved is not None and moved.parent == out and moved.name.startswith("previous-")
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted([run_dir.LOCK_NAME, moved.name])  # nothing a later resume could pick up
    assert (moved / "checkpoints" / "step8" / "rank0.pt").is_file() and (moved / "metrics.jsonl").is_file()
    from fastssl.engine.checkpoint import checkpoints

    assert checkpoints(out / "checkpoints") == []


@pytest.mark.parametrize("key, section, value", [("model.arch", "model", {"arch": "test_vit2"}),
                                                 ("optim.batch_size", "optim", {"batch_size": 32}),
                                                 ("run.seed", "run", {"seed": 7})])
def test_changed_identity_in_a_used_directory_is_one_line(tmp_path, data, key, section, value):
    out = tmp_path / "run"
    used_run(out, make_cfg(out, data))
    new = make_cfg(out, data, **{section: value})
    run_dir.prepare(new, rank=0)  # the directory rules pass; the resume rules (in set-up, before any write) refuse
    with pytest.raises(ConfigError) as err:
        resume_rules.check(new, out / "checkpoints" / "step8", world_changed=False)
    msg = str(err.value)
    assert msg.startswith(f"{key} changed since checkpoint") and "another run.output_dir" in msg and "\n" not in msg
    assert (out / "checkpoints" / "step8").is_dir()  # nothing touched


def test_a_finished_run_says_so_and_changes_nothing(tmp_path, data):
    out = tmp_path / "run"
    cfg = make_cfg(out, data)
    used_run(out, cfg)
    run_dir.mark_finished(cfg, 8)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != run_dir.LOCK_NAME}
    time.sleep(0.01)
    with pytest.raises(run_dir.RunFinished, match="finished at step 8; outputs left unchanged"):
        run_dir.prepare(make_cfg(out, data, engine={"progress": False}), rank=0)  # volatile keys do not count
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != run_dir.LOCK_NAME}
    assert after == before


def test_a_changed_config_continues_a_finished_run(tmp_path, data):
    out = tmp_path / "run"
    cfg = make_cfg(out, data)
    used_run(out, cfg)
    run_dir.mark_finished(cfg, 8)
    run_dir.prepare(make_cfg(out, data, optim={"max_steps": 20}), rank=0)  # more steps: resume and train on
    assert (out / run_dir.FINISHED_NAME).exists()  # nothing is written before the resume rules pass ...
    run_dir.unfinish(out)  # ... then set-up marks it unfinished: training will change the outputs
    assert not (out / run_dir.FINISHED_NAME).exists()


def test_output_dir_that_cannot_be_created(tmp_path, data):
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match="is a file"):
        make_cfg(tmp_path / "file", data)
    with pytest.raises(Exception, match="cannot be created"):
        make_cfg(tmp_path / "file" / "run", data)


def test_an_unwritable_directory_at_start_is_one_line(tmp_path, data, monkeypatch):
    """The config-time check cannot see everything (e.g. a folder that turns read-only): the lock file is the probe."""
    def refuse(out):
        raise PermissionError(13, "Permission denied", str(out / run_dir.LOCK_NAME))

    monkeypatch.setattr(run_dir, "acquire_lock", refuse)
    with pytest.raises(ConfigError, match="is not writable \\(Permission denied\\); choose another run.output_dir"):
        run_dir.prepare(make_cfg(tmp_path / "run", data), rank=0)
