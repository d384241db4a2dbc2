"""Issue 13 end to end: real training processes on a tiny folder that holds corrupt images.

Two scenarios, each a short sequence of runs on one output directory, so the suite pays for few
process start-ups:
1. one rank: Ctrl-C → checkpoint + exit 130; re-run finishes (corrupt PNG/JPEG in train/ and test/
   skipped, reported once); re-run of the finished run changes nothing; a changed seed and a batch
   larger than the data set are one line, exit 2; ``run.resume=never`` moves the old run aside.
2. two ranks under ``deepspeed``: SIGTERM to the launcher (not the ranks) → both ranks checkpoint
   at a step boundary and exit; the run is resumed on one rank and finishes with every step logged.
"""
from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _corrupt_images import corrupt_jpeg, corrupt_png
from test_train_run import REPO, TRAIN, VENV_BIN, _wait_for_step, env, losses, tiny_config, train
from _helpers import bar_image_folder, free_port  # noqa: E402


@pytest.fixture(scope="module")
def folder_with_bad_images(tmp_path_factory) -> Path:
    """4 classes × (24 train, 8 test) 16×16 PNGs, plus a corrupt PNG and JPEG in train/ and a corrupt PNG in test/."""
    root = bar_image_folder(tmp_path_factory.mktemp("tiny_bad"))
    rng = np.random.default_rng(1)
    (root / "train" / "c0" / "bad_data.png").write_bytes(corrupt_png(rng))
    (root / "train" / "c1" / "bad_scan.jpg").write_bytes(corrupt_jpeg(rng))
    (root / "test" / "c2" / "bad_data.png").write_bytes(corrupt_png(rng))
    return root


def one_line(stderr: str, needle: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("fastssl:")]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines and needle in lines[-1], stderr[-3000:]
    return lines[-1]


def test_one_rank_ctrl_c_finish_rerun_and_directory_rules(tmp_path, folder_with_bad_images):
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, folder_with_bad_images, optim={"max_steps": 12}, engine={"ckpt_every_steps": 100},
                      eval={"knn_at_init": False})
    proc = subprocess.Popen([sys.executable, str(TRAIN), "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    _wait_for_step(run, 3, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    line = one_line(err, "SIGINT (Ctrl-C): checkpoint saved at")
    assert "re-run the same command to resume" in line
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(saved) == 1 and saved[0].startswith("step")

    done = train(cfg)  # resumes; the corrupt images are skipped and reported once per split
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr and max(losses(run)) == 12
    assert done.stderr.count("skipped 2 of 98 image files") == 1 and done.stderr.count("skipped 1 of 33") == 1
    assert (run / "encoder.pt").is_file() and (run / "summary.json").is_file()

    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".fastssl.lock"}
    again = train(cfg)  # finished: says so, exit 0, nothing changes (no duplicate eval row)
    assert again.returncode == 0, again.stderr[-3000:]
    one_line(again.stderr, "finished at step 12; outputs left unchanged")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".fastssl.lock"} == before

    changed = train(cfg, "run.seed=2")
    assert changed.returncode == 2
    one_line(changed.stderr, "holds a run finished at step 12 with run.seed=1 (this config: 2); a finished run changes only by continuing")

    too_big = train(cfg, "optim.batch_size=128", f"run.output_dir={tmp_path / 'other'}")
    assert too_big.returncode == 2
    one_line(too_big.stderr, "optim.batch_size=128 on 1 rank(s) needs at least 128 training images")

    fresh = train(cfg, "run.resume=never", "optim.max_steps=2")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    previous = [p for p in run.iterdir() if p.name.startswith("previous-")]
    assert len(previous) == 1 and (previous[0] / "checkpoints" / "step12").is_dir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step2"] and max(losses(run)) == 2


def _lock_is_free(run: Path) -> bool:
    with open(run / ".fastssl.lock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return True


def test_launcher_sigterm_stops_both_ranks_then_resume_on_one_rank(tmp_path, folder_with_bad_images):
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, folder_with_bad_images, optim={"max_steps": 40, "batch_size": 8},
                      engine={"ckpt_every_steps": 100}, eval={"knn_at_init": False})
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           str(TRAIN), "--config", str(cfg)]
    log = open(tmp_path / "ranks.log", "w")  # the ranks' output (they outlive the launcher's pipes)
    launcher = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=REPO)
    _wait_for_step(run, 3, launcher, timeout=400)
    launcher.send_signal(signal.SIGTERM)  # the launcher dies; its ranks must not train on as orphans
    launcher.wait(timeout=60)
    deadline = time.time() + 180
    while time.time() < deadline and not _lock_is_free(run):  # rank 0 holds the lock until it exits
        time.sleep(0.5)
    assert _lock_is_free(run), "the ranks kept running after their launcher died"
    saved = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step")]
    assert len(saved) == 1, saved
    step = int(saved[0].name[4:])
    ranks_log = (tmp_path / "ranks.log").read_text()
    assert step < 40 and {"rank0.pt", "rank1.pt"} <= {p.name for p in saved[0].iterdir()}, ranks_log[-3000:]
    assert "the deepspeed launcher (pid" in ranks_log and "checkpoint saved at" in ranks_log

    resumed = train(cfg)  # one rank: global batch 16 kept with grad_accum 2
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "written by 2 ranks, resuming on 1: optim.grad_accum 1 -> 2 keeps the global batch of 16" in resumed.stderr
    assert sorted(losses(run)) == list(range(1, 41))
    assert json.loads((run / "deepspeed.json").read_text())["train_batch_size"] == 16
