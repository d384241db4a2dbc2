"""Issue 25, classes 2 and 7: resume with changed settings (the rules table) and finished runs.

Unit level: ``resume_rules`` against configs and checkpoint folders laid out as a run leaves them,
``run_dir`` for finished runs, and ``apply_optimizer_settings`` against a real torch optimizer and
LambdaLR. ``test_issue25_runs.py`` runs the same rules end to end.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from _helpers import layout_only_folder

from fastssl.config import ConfigError, TrainConfig, dump_config
from fastssl.engine import resume_rules, run_dir
from fastssl.engine.resume_rules import APPLY, GLOBAL_BATCH, REFUSE, rule_for
from fastssl.engine.schedule import lr_scheduler, plan_steps


def make_cfg(out: Path, data_root: Path, **sections) -> TrainConfig:
    tree = {"run": {"output_dir": str(out), "seed": 1}, "data": {"dataset": "folder", "root": str(data_root)},
            "model": {"arch": "test_vit", "patch_size": 4}, "optim": {"batch_size": 16, "warmup_epochs": 0.5}}
    for key, value in sections.items():
        tree.setdefault(key, {}).update(value)
    return TrainConfig.model_validate(tree)


@pytest.fixture
def data(tmp_path) -> Path:
    return layout_only_folder(tmp_path / "data", "c0")


def checkpoint(out: Path, cfg: TrainConfig, step: int = 8, *, inside: bool = True, fingerprint=None) -> Path:
    folder = out / "checkpoints" / f"step{step}"
    folder.mkdir(parents=True)
    (folder / "rank0.pt").write_bytes(b"x")
    (folder / "shape.json").write_text(json.dumps({"world_size": 1, "global_batch": 16, "global_step": step, "zero_stage": 0}))
    (out / "config.yaml").write_text(dump_config(cfg))
    if inside:
        (folder / "config.yaml").write_text(dump_config(cfg))
    if fingerprint is not None:
        (folder / resume_rules.DATA_FILE).write_text(json.dumps(fingerprint))
    return folder


@pytest.fixture(autouse=True)
def release_locks():
    yield
    for f in list(run_dir._held):
        run_dir.release_lock(f)


# ---- the table ----------------------------------------------------------------------------------------

def test_every_config_key_has_a_rule_and_unknown_keys_are_refused():
    keys = resume_rules.flatten(TrainConfig().model_dump(mode="json"))
    assert len(keys) > 40
    for key in keys:
        assert rule_for(key)[0] in (APPLY, REFUSE, GLOBAL_BATCH), key
    assert rule_for("data.synthetic.classes")[0] == REFUSE  # a section added later is refused until classified
    assert rule_for("brand_new.key") == (REFUSE, "not classified for resuming")
    assert rule_for("engine.compile_mode")[0] == APPLY and rule_for("engine.compile")[0] == APPLY
    assert rule_for("model.attn_backend")[0] == APPLY and rule_for("model.arch")[0] == REFUSE


@pytest.mark.parametrize("section, value, key, old, new", [
    ("method", {"loss": "nt_xent"}, "method.loss", "dcl", "nt_xent"),
    ("method", {"head": {"out_dim": 64}}, "method.head.out_dim", "128", "64"),
    ("model", {"arch": "test_vit2"}, "model.arch", "test_vit", "test_vit2"),
    ("run", {"seed": 7}, "run.seed", "1", "7"),
    ("engine", {"precision": "bf16"}, "engine.precision", "auto", "bf16"),
    ("data", {"image_size": 64}, "data.image_size", "32", "64"),
    ("data", {"augment": {"flip_p": 0.1}}, "data.augment.flip_p", "0.5", "0.1"),
    ("optim", {"batch_size": 8}, "optim.batch_size", "16", "8"),
    ("optim", {"grad_accum": 2}, "optim.grad_accum", "1", "2"),
    ("deepspeed", {"steps_per_print": 5}, "deepspeed.steps_per_print", "unset", "5"),
])
def test_refused_keys_name_key_and_both_values(tmp_path, data, section, value, key, old, new):
    out = tmp_path / "run"
    folder = checkpoint(out, make_cfg(out, data))
    with pytest.raises(ConfigError) as err:
        resume_rules.check(make_cfg(out, data, **{section: value}), folder, world_changed=False)
    msg = str(err.value)
    assert msg.startswith(f"{key} changed since checkpoint {folder} ({old} there, {new} now)"), msg
    assert f"set {key}={old} to resume" in msg and "run.resume=never" in msg and "\n" not in msg


def test_several_refused_keys_are_named_in_the_one_line(tmp_path, data):
    out = tmp_path / "run"
    folder = checkpoint(out, make_cfg(out, data))
    with pytest.raises(ConfigError, match=r"\(also changed: run.seed\)"):
        resume_rules.check(make_cfg(out, data, model={"arch": "test_vit2"}, run={"seed": 5}), folder, world_changed=False)


def test_applied_keys_are_listed_with_both_values(tmp_path, data, caplog):
    out = tmp_path / "run"
    folder = checkpoint(out, make_cfg(out, data))
    new = make_cfg(out, data, optim={"base_lr": 2e-3, "betas": [0.8, 0.99], "max_steps": 99},
                   eval={"knn_k": 5}, engine={"progress": False, "ckpt_every_steps": 7}, run={"resume": str(folder)})
    applied = resume_rules.check(new, folder, world_changed=False)
    assert "optim.base_lr 0.001 → 0.002" in applied and "optim.betas [0.9, 0.999] → [0.8, 0.99]" in applied
    assert "optim.max_steps unset → 99" in applied and "eval.knn_k 200 → 5" in applied and "engine.ckpt_every_steps 500 → 7" in applied
    assert not any(a.startswith(("engine.progress", "run.resume")) for a in applied)  # how it was started, not what it computes
    with caplog.at_level("WARNING", logger="fastssl"):
        resume_rules.say_applied(applied, folder, 8)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "applied from here on (config.yaml records them)" in lines[0]


def test_batch_keys_may_change_on_another_rank_count(tmp_path, data):
    out = tmp_path / "run"
    folder = checkpoint(out, make_cfg(out, data))
    changed = make_cfg(out, data, optim={"batch_size": 8, "grad_accum": 2})
    assert len(resume_rules.check(changed, folder, world_changed=True)) == 2
    with pytest.raises(ConfigError, match="optim.batch_size changed"):
        resume_rules.check(changed, folder, world_changed=False)


def test_an_old_checkpoint_is_compared_with_the_runs_config_and_one_without_any_record_resumes(tmp_path, data, caplog):
    out = tmp_path / "run"
    folder = checkpoint(out, make_cfg(out, data), inside=False)  # written before checkpoints held their config
    with pytest.raises(ConfigError, match="run.seed changed"):
        resume_rules.check(make_cfg(out, data, run={"seed": 3}), folder, world_changed=False)
    (out / "config.yaml").unlink()
    with caplog.at_level("WARNING", logger="fastssl"):
        assert resume_rules.check(make_cfg(out, data, run={"seed": 3}), folder, world_changed=False) == []
    assert "no record of its settings" in caplog.text


def test_a_changed_data_set_is_refused(tmp_path, data):
    fp = {"train": {"classes": 3, "images": 12, "digest": "a"}, "test": {"classes": 3, "images": 6, "digest": "b"}}
    folder = checkpoint(tmp_path / "run", make_cfg(tmp_path / "run", data), fingerprint=fp)
    resume_rules.check_data(folder, fp, data)
    with pytest.raises(ConfigError, match=r"data.root .*/train changed since checkpoint .* \(12 images in 3 classes there, 13 in 3 now\)"):
        resume_rules.check_data(folder, {**fp, "train": {"classes": 3, "images": 13, "digest": "c"}}, data)
    with pytest.raises(ConfigError, match=r"/test changed .*the same count, other files or sizes"):
        resume_rules.check_data(folder, {**fp, "test": {"classes": 3, "images": 6, "digest": "z"}}, data)
    resume_rules.check_data(tmp_path, fp, data)  # no fingerprint recorded (older checkpoint): nothing to compare


@pytest.mark.parametrize("sections, needle", [({"optim": {"max_steps": 4}}, "optim.max_steps=4 ends before it"),
                                              ({"optim": {"epochs": 1, "warmup_epochs": 0}}, "optim.epochs=1 (5 steps) ends before it")])
def test_a_run_is_never_shortened(tmp_path, data, sections, needle):
    out = tmp_path / "run"
    folder = checkpoint(out, make_cfg(out, data))
    cfg = make_cfg(out, data, **sections)
    with pytest.raises(ConfigError, match=rf"checkpoint .*step8 is at step 8 and {re.escape(needle)}"):
        resume_rules.check_length(folder, 8, cfg.optim.max_steps or 5, cfg)
    resume_rules.check_length(folder, 8, 8, cfg)  # killed during the final evaluation: finishing is continuing
    resume_rules.check_length(None, 8, 4, cfg)  # a fresh start


import re  # noqa: E402


# ---- the optimizer settings written over a loaded checkpoint ------------------------------------------

def _engine(base_lr: float, wd: float, betas, total=10):
    p = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    plan = plan_steps(images_per_epoch=64, micro_batch=16, grad_accum=1, world_size=1, epochs=1, max_steps=total,
                      warmup_epochs=0.5, base_lr=base_lr)
    opt = torch.optim.AdamW([{"params": [p[0]], "weight_decay": wd}, {"params": [p[1]], "weight_decay": 0.0}],
                            lr=plan.peak_lr, betas=betas)
    sched = lr_scheduler(plan, 0.01)(opt)

    class Engine:
        optimizer, lr_scheduler = opt, sched
    return Engine, p


def test_configured_optimizer_settings_win_over_the_checkpoint():
    old, params = _engine(1e-3, 0.05, (0.9, 0.999))
    for _ in range(5):
        params[0].sum().backward()
        old.optimizer.step()
        old.lr_scheduler.step()
    saved = (old.optimizer.state_dict(), old.lr_scheduler.state_dict())
    new, _ = _engine(4e-3, 0.1, (0.8, 0.99), total=20)  # base_lr, weight decay, betas and length changed
    fresh = resume_rules.fresh_optimizer_settings(new)
    new.optimizer.load_state_dict(saved[0])
    new.lr_scheduler.load_state_dict(saved[1])
    assert new.optimizer.param_groups[0]["betas"] == (0.9, 0.999)  # what a plain load leaves: the old values
    resume_rules.apply_optimizer_settings(new, fresh)
    g0, g1 = new.optimizer.param_groups
    assert g0["weight_decay"] == 0.1 and g1["weight_decay"] == 0.0 and g0["betas"] == (0.8, 0.99)
    peak = 4e-3 * 16 / 256
    from fastssl.engine.schedule import lr_factor

    expect = peak * lr_factor(5, warmup_steps=2, total_steps=20, min_ratio=0.01)
    assert math.isclose(g0["lr"], expect, rel_tol=1e-9) and math.isclose(g1["lr"], expect, rel_tol=1e-9)
    new.optimizer.step()
    new.lr_scheduler.step()
    assert math.isclose(g0["lr"], peak * lr_factor(6, warmup_steps=2, total_steps=20, min_ratio=0.01), rel_tol=1e-9)
    assert new.optimizer.state[new.optimizer.param_groups[0]["params"][0]]["step"] == 5  # the moments are the checkpoint's (no gradient in the new step)


# ---- class 7: finished runs ---------------------------------------------------------------------------

def finished_run(out: Path, data: Path, **sections) -> TrainConfig:
    cfg = make_cfg(out, data, **sections)
    checkpoint(out, cfg, step=8)
    (out / "metrics.jsonl").write_text('{"step": 8, "kind": "eval", "knn": 0.5}\n')
    run_dir.mark_finished(cfg, 8, steps_per_epoch=4)
    return cfg


def _mtimes(out: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != run_dir.LOCK_NAME}


@pytest.mark.parametrize("sections, asked", [
    ({"optim": {"max_steps": 5}}, 5),
    ({"optim": {"max_steps": 8}}, 8),
    ({"optim": {"epochs": 1}}, 4),
    ({"optim": {"epochs": 2}}, 8),
    ({"optim": {"epochs": 2, "base_lr": 1.0}}, 8),  # another setting but no more steps: refused, nothing changes
    ({"optim": {"epochs": 2}, "eval": {"knn_k": 3}}, 8),
    ({"optim": {"epochs": 2}, "run": {"seed": 3}}, 8),
    ({"optim": {"epochs": 2}, "engine": {"progress": False, "log_every_steps": 3}}, 8),  # how it is shown: no change
])
def test_a_finished_run_changes_only_by_continuing(tmp_path, data, sections, asked):
    out = tmp_path / "run"
    finished_run(out, data, optim={"epochs": 2})
    before = _mtimes(out)
    time.sleep(0.01)
    other = {k: v for k, v in sections.items() if k != "optim"} or len(sections["optim"]) > 1
    with pytest.raises(ConfigError if other and "engine" not in sections else run_dir.RunFinished) as err:
        run_dir.prepare(make_cfg(out, data, **sections), rank=0)
    msg = str(err.value)
    if isinstance(err.value, ConfigError):  # a setting that no step would honour: refused, naming it
        key = {"optim": "optim.base_lr", "eval": "eval.knn_k", "run": "run.seed"}[[k for k in sections if k != "optim"][0]
                                                                                   if len(sections) > 1 else "optim"]
        assert f"holds a run finished at step 8 with {key}=" in msg and "changes only by continuing it" in msg
    elif asked == 8:  # the very same run
        assert msg.endswith("holds this run, finished at step 8; outputs left unchanged (to train more, raise "
                            "optim.max_steps or optim.epochs; to start over, run.resume=never)")
    else:
        assert f"finished at step 8; this config asks for {asked} steps, so nothing is trained and outputs left unchanged" in msg
    assert "\n" not in msg
    assert _mtimes(out) == before


@pytest.mark.parametrize("optim", [{"epochs": 3}, {"epochs": 2, "max_steps": 9}])  # 12 or 9 > 8 steps
def test_more_steps_continue_a_finished_run(tmp_path, data, optim):
    out = tmp_path / "run"
    finished_run(out, data, optim={"epochs": 2})
    before = _mtimes(out)
    time.sleep(0.01)
    # No RunFinished: on to the resume rules, in place. Nothing is moved aside and nothing is written
    # yet (finished.json goes only once every check has passed, run_dir.unfinish).
    assert run_dir.prepare(make_cfg(out, data, optim=optim), rank=0) is None
    assert _mtimes(out) == before and (out / "checkpoints" / "step8" / "rank0.pt").is_file()


def test_a_fresh_start_is_still_possible(tmp_path, data):
    out = tmp_path / "run"
    finished_run(out, data, optim={"epochs": 2})
    moved = run_dir.prepare(make_cfg(out, data, optim={"epochs": 1}, run={"resume": "never"}), rank=0)
    assert moved is not None and (moved / "finished.json").is_file() and not (out / "finished.json").exists()


def test_keys_added_to_fastssl_since_the_checkpoint(tmp_path, data):
    """A checkpoint written before a key existed: the key at its default is no change; set otherwise, the table decides;
    a key fastssl no longer has is ignored."""
    import yaml

    out = tmp_path / "run"
    folder = checkpoint(out, make_cfg(out, data))
    tree = yaml.safe_load((folder / "config.yaml").read_text())
    del tree["data"]["synthetic"], tree["eval"]["enabled"], tree["eval"]["knn_k"], tree["model"]["drop_path_rate"]
    tree["optim"]["removed_since"] = 3
    (folder / "config.yaml").write_text(yaml.safe_dump(tree))
    assert resume_rules.check(make_cfg(out, data), folder, world_changed=False) == []
    assert resume_rules.check(make_cfg(out, data, eval={"knn_k": 7}), folder, world_changed=False) == ["eval.knn_k unset → 7"]
    with pytest.raises(ConfigError, match=r"model.drop_path_rate changed since checkpoint .* \(unset there, 0.1 now\)"):
        resume_rules.check(make_cfg(out, data, model={"drop_path_rate": 0.1}), folder, world_changed=False)


def test_a_data_set_moved_elsewhere_is_checked_by_its_files(tmp_path, data):
    import shutil

    out = tmp_path / "run"
    fp = {"train": {"classes": 1, "images": 1, "digest": "a"}, "test": {"classes": 1, "images": 1, "digest": "b"}}
    folder = checkpoint(out, make_cfg(out, data), fingerprint=fp)
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    assert resume_rules.check(make_cfg(out, moved), folder, world_changed=False) == [f"data.root {data} → {moved}"]
    resume_rules.check_data(folder, fp, moved)  # the same files: resumes
    with pytest.raises(ConfigError, match="changed since checkpoint"):
        resume_rules.check_data(folder, {**fp, "test": {"classes": 1, "images": 2, "digest": "c"}}, moved)
