"""Issue 25 end to end: one output directory taken through the resume and finished-run rules by real
``fastssl/train.py`` processes (one rank; each process costs a start-up, so the cases share a run).

1. a 4-step run finishes; 2. re-run asking for fewer steps: exit 0, no output changes; 3. a changed
loss: one line naming key and values, exit 2, nothing written; 4. more steps with a new base_lr:
the new LR trains (checked in metrics.jsonl) and config.yaml records it; 5. an image added to the
data: one line, exit 2.
"""
from __future__ import annotations

import json
import math
import shutil

from test_reliability_runs import one_line
from test_train_run import tiny_config, tiny_folder, train  # noqa: F401  (tiny_folder: a fixture)

from fastssl.engine.schedule import lr_factor


def _mtimes(run):
    return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != ".fastssl.lock"}


def test_resume_rules_and_a_finished_run_end_to_end(tmp_path, tiny_folder):
    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, data, optim={"max_steps": 4, "warmup_epochs": 0}, engine={"ckpt_every_steps": 2},
                      eval={"knn_at_init": False, "linear_probe": False})
    first = train(cfg)
    assert first.returncode == 0, first.stderr[-3000:]

    before = _mtimes(run)
    fewer = train(cfg, "optim.max_steps=3")
    assert fewer.returncode == 0, fewer.stderr[-3000:]
    one_line(fewer.stderr, "finished at step 4; this config asks for 3 steps, so nothing is trained and outputs left unchanged")
    assert _mtimes(run) == before

    loss = train(cfg, "optim.max_steps=6", "method.loss=nt_xent")
    assert loss.returncode == 2, loss.stderr[-3000:]
    one_line(loss.stderr, "config error: method.loss changed since checkpoint")
    assert "(dcl there, nt_xent now)" in loss.stderr and "set method.loss=dcl to resume" in loss.stderr
    assert _mtimes(run) == before  # refused before anything was written (finished.json and config.yaml included)

    more = train(cfg, "optim.max_steps=6", "optim.base_lr=0.01")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "applied from here on (config.yaml records them): optim.base_lr 0.005 → 0.01" in more.stderr, more.stderr[-3000:]
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"}
    for step in (5, 6):  # the LR of optimizer step s is peak × factor(s - 1) over the new 6-step schedule
        expect = 0.01 * 16 / 256 * lr_factor(step - 1, warmup_steps=0, total_steps=6, min_ratio=1e-3)
        assert math.isclose(lrs[step], expect, rel_tol=1e-5), (step, lrs[step], expect)
    assert "base_lr: 0.01" in (run / "config.yaml").read_text()
    assert json.loads((run / "finished.json").read_text())["steps"] == 6

    shutil.copy(data / "train" / "c0" / "0.png", data / "train" / "c0" / "extra.png")
    changed = train(cfg, "optim.max_steps=8", "optim.base_lr=0.01")
    assert changed.returncode == 2, changed.stderr[-3000:]
    one_line(changed.stderr, "/train changed since checkpoint")
    assert "(96 images in 4 classes there, 97 in 4 now)" in changed.stderr
