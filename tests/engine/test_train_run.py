"""End-to-end runs of ``fastssl/train.py`` on a tiny generated image folder (CPU, subprocesses).

Each run is a real process, as a user would start it: plain ``python`` (one rank) or the
``deepspeed`` launcher (two gloo ranks). They check what the issue asks of the engine: a finite,
decreasing loss; resume after SIGKILL reproduces the uninterrupted run; SIGTERM saves and exits;
a non-finite loss stops with the last good checkpoint kept; the exported encoder loads in timm.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import bar_image_folder, free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "fastssl" / "train.py"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """4 classes × (24 train, 8 test) 16×16 grey PNGs: a bright bar whose orientation/position is the class."""
    return bar_image_folder(tmp_path_factory.mktemp("tiny"))


def tiny_config(tmp_path: Path, data_root: Path, **sections) -> Path:
    cfg = {
        "run": {"output_dir": str(tmp_path / "run"), "seed": 1},
        "data": {"dataset": "folder", "root": str(data_root), "image_size": 16, "num_threads": 1,
                 "augment": {"crop_scale": [0.5, 1.0]}},
        "model": {"arch": "test_vit", "patch_size": 4},  # timm's tiny test ViT: 6 blocks of width 64
        "method": {"name": "simclr", "loss": "dcl", "head": {"hidden_dim": 64, "out_dim": 32}},
        "optim": {"epochs": 30, "batch_size": 16, "base_lr": 5e-3, "warmup_epochs": 1, "clip_grad": 3.0},
        "engine": {"log_every_steps": 1, "ckpt_every_steps": 4, "progress": False},
        "eval": {"knn_k": 10, "batch_size": 32, "knn_extra": []},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    e.pop("RANK", None)
    e.pop("WORLD_SIZE", None)
    return e


def train(config: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), "--config", str(config), *overrides],
                          capture_output=True, text=True, timeout=timeout, env=env(), cwd=REPO)


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def test_short_run_learns_and_exports(tmp_path, tiny_folder):
    cfg = tiny_config(tmp_path, tiny_folder, optim={"max_steps": 30}, eval={"knn_every_epochs": 2})
    proc = train(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    loss = losses(run)
    values = [loss[s] for s in sorted(loss)]
    assert len(values) == 30 and all(np.isfinite(values))
    assert np.mean(values[-5:]) < np.mean(values[:5]) - 0.05, values
    assert "kNN k=10" in proc.stdout and "linear probe" in proc.stdout and "random init" in proc.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    eval_steps = [r["step"] for r in rows if r["kind"] == "eval"]
    assert eval_steps == [0, 12, 24, 30]  # init, every 2 epochs of 6 steps, end
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["eval_final"] and summary["eval_init"]
    # What was written alongside: resolved config, DeepSpeed JSON, TensorBoard events, checkpoints.
    assert (run / "config.yaml").is_file() and (run / "curves.png").stat().st_size > 0
    ds = json.loads((run / "deepspeed.json").read_text())
    assert ds["train_micro_batch_size_per_gpu"] == 16
    assert any((run / "tensorboard").iterdir())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step28", "step30"]
    # The exported encoder loads into timm strictly.
    import fastssl  # noqa: F401
    import timm

    model = timm.create_model("test_vit", img_size=16, patch_size=4, num_classes=0)
    model.load_state_dict(torch.load(run / "encoder.pt"), strict=True)


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read()[-3000:]}")
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(s >= step for s in losses(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} never logged")


def test_sigkill_resume_reproduces_uninterrupted_run(tmp_path, tiny_folder):
    steps = {"max_steps": 12}
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir(), cut_dir.mkdir()
    ref = train(tiny_config(ref_dir, tiny_folder, optim=steps, eval={"knn_at_init": False}))
    assert ref.returncode == 0, ref.stderr[-3000:]
    cfg = tiny_config(cut_dir, tiny_folder, optim=steps, eval={"knn_at_init": False})
    proc = subprocess.Popen([sys.executable, str(TRAIN), "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    _wait_for_step(cut_dir / "run", 6, proc)  # a checkpoint at step 4 exists, steps 5-6 are lost
    proc.kill()
    proc.wait()
    resumed = train(cfg)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    want, got = losses(ref_dir / "run"), losses(cut_dir / "run")
    assert sorted(got) == list(range(1, 13))
    for step in range(1, 13):
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (step, got, want)


def test_sigterm_saves_and_exits_then_resumes(tmp_path, tiny_folder):
    cfg = tiny_config(tmp_path, tiny_folder, optim={"max_steps": 40}, engine={"ckpt_every_steps": 100}, eval={"knn_at_init": False})
    proc = subprocess.Popen([sys.executable, str(TRAIN), "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    _wait_for_step(tmp_path / "run", 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM: checkpoint saved" in err
    saved = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert len(saved) == 1 and saved[0].startswith("step")
    done = train(cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    assert max(losses(tmp_path / "run")) == 40


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_folder):
    # An absurd learning rate blows the weights up within a few steps; the guard must stop the run.
    cfg = tiny_config(tmp_path, tiny_folder, optim={"max_steps": 30, "base_lr": 1e30, "warmup_epochs": 0, "clip_grad": None},
                      engine={"ckpt_every_steps": 1}, eval={"knn_at_init": False})
    proc = train(cfg)
    assert proc.returncode == 3, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "non-finite loss" in last and "last good checkpoint" in last
    kept = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert kept, "the last good checkpoint must be kept"
    assert all(np.isfinite(v) for v in losses(tmp_path / "run").values())


@pytest.mark.parametrize("zero_stage, precision", [(0, "fp32"), (1, "fp32"), (2, "bf16"), (3, "fp32")])
def test_deepspeed_launcher_two_cpu_ranks(tmp_path, tiny_folder, zero_stage, precision):
    """`deepspeed --num_gpus 2 fastssl/train.py ...` runs two gloo ranks, every ZeRO stage, fp32 and bf16."""
    cfg = tiny_config(tmp_path, tiny_folder, optim={"max_steps": 6, "batch_size": 8},
                      engine={"zero_stage": zero_stage, "ckpt_every_steps": 3, "precision": precision},
                      eval={"knn_at_init": False})
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           str(TRAIN), "--config", str(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env(), cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = tmp_path / "run"
    ds = json.loads((run / "deepspeed.json").read_text())
    assert ds["train_batch_size"] == 16 and ds["bf16"]["enabled"] == (precision == "bf16")
    assert sorted(losses(run)) == list(range(1, 7))
    for rank in (0, 1):
        assert (run / "checkpoints" / "step6" / f"rank{rank}.pt").is_file()
