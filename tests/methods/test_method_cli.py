"""Every registered method trains from the CLI (a few steps, finite loss) and resumes exactly; the
shipped configs validate; two gloo ranks run a method with an EMA target in bf16 under ZeRO 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from test_train_run import REPO, TRAIN, VENV_BIN, env, losses, tiny_config, tiny_folder, train  # noqa: E402,F401

from _helpers import free_port, layout_only_folder  # noqa: E402

from fastssl.config import load_config  # noqa: E402
from fastssl.methods.registry import method_names  # noqa: E402

HEADS = {
    "simclr": {"head": {"hidden_dim": 64, "out_dim": 32}},
    "byol": {"projector": {"hidden_dim": 64, "out_dim": 32}, "predictor": {"hidden_dim": 64, "out_dim": 32}},
    "simsiam": {"projector": {"hidden_dim": 64, "out_dim": 32}, "predictor": {"hidden_dim": 16, "out_dim": 32}},
    "mocov3": {"projector": {"hidden_dim": 64, "out_dim": 32}, "predictor": {"hidden_dim": 64, "out_dim": 32}},
    "mmoco": {"projector": {"hidden_dim": 64, "out_dim": 32}, "predictor": {"hidden_dim": 64, "out_dim": 32},
              "n_chunks": 4, "target_chunks": 2},
    "mbyol": {"projector": {"hidden_dim": 64, "out_dim": 32}, "predictor": {"hidden_dim": 64, "out_dim": 32},
              "n_chunks": 4, "cross_attention": True},
    "mae": {"decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
    "can": {"decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "projector": {"hidden_dim": 64, "out_dim": 32}},
    "dac": {"decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "projector": {"hidden_dim": 64, "out_dim": 32},
            "predictor": {"hidden_dim": 16, "out_dim": 32}},
    "mocov2": {"head": {"hidden_dim": 64, "out_dim": 32, "norm": "none"}, "queue_size": 64},
    "swav": {"head": {"hidden_dim": 64, "out_dim": 32}, "n_prototypes": 20, "n_local": 2, "local_size": 8,
             "freeze_prototypes_epochs": 0.01, "queue_length": 32, "queue_start_epoch": 0.0},
}


def method_config(tmp_path: Path, data_root: Path, name: str, **sections):
    path = tiny_config(tmp_path, data_root, **sections)
    cfg = json.loads(path.read_text())
    cfg["method"] = {"name": name, **HEADS[name]}  # replace, not merge: the sections differ per method
    path.write_text(json.dumps(cfg))
    return path


def test_every_registered_method_has_configs():
    assert sorted(HEADS) == sorted(method_names())
    for name in method_names():
        assert (REPO / "configs" / "fmnist" / f"{name}.yaml").is_file(), name
        assert (REPO / "configs" / "imagenet" / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("name", method_names())
def test_shipped_configs_validate(name, tmp_path):
    layout_only_folder(tmp_path)
    fm = load_config(REPO / "configs" / "fmnist" / f"{name}.yaml")
    assert fm.method.name == name and fm.data.dataset == "fashion-mnist"
    gpu = load_config(REPO / "configs" / "imagenet" / f"{name}.yaml", [f"data.root={tmp_path}"])
    assert gpu.method.name == name and gpu.engine.precision == "bf16"


@pytest.mark.parametrize("name", [n for n in method_names() if n != "simclr"])  # simclr: tests/engine
def test_cli_steps_and_exact_resume(name, tmp_path, tiny_folder):
    """4 steps with a checkpoint every 2; a second run resumed from the step-2 checkpoint (a new output
    folder) must log the same losses for steps 3 and 4: EMA targets, LR groups and data resume."""
    opts = dict(optim={"max_steps": 4}, engine={"ckpt_every_steps": 2}, eval={"knn_at_init": False, "knn_k": 5})
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir(), b_dir.mkdir()
    a = train(method_config(a_dir, tiny_folder, name, **opts))
    assert a.returncode == 0, a.stderr[-3000:]
    want = losses(a_dir / "run")
    assert sorted(want) == [1, 2, 3, 4] and all(v == v and abs(v) < 1e6 for v in want.values())
    b = train(method_config(b_dir, tiny_folder, name, **opts), f"run.resume={a_dir / 'run' / 'checkpoints' / 'step2'}")
    assert b.returncode == 0, b.stderr[-3000:]
    got = losses(b_dir / "run")
    for step in (3, 4):
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (name, step, got, want)
    summary = json.loads((a_dir / "run" / "summary.json").read_text())
    assert {s.get("k", "probe") for s in summary["eval_final"]} == {5, "probe"}


def test_two_ranks_bf16_zero2_with_an_ema_target(tmp_path, tiny_folder):
    cfg = method_config(tmp_path, tiny_folder, "mocov3", optim={"max_steps": 3, "batch_size": 8},
                        engine={"zero_stage": 2, "precision": "bf16", "ckpt_every_steps": 3}, eval={"knn_at_init": False, "knn_k": 5})
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(TRAIN), "--config", str(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env(), cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3]


def test_can_on_two_gloo_ranks(tmp_path, tiny_folder):
    """CAN on 2 ranks: masks and σ drawn for the global batch, InfoNCE negatives from both ranks (MAE and
    DAC share the masking code; their 2-rank CLI runs are in notes/masked_image.md, kept out of CI time)."""
    cfg = method_config(tmp_path, tiny_folder, "can", optim={"max_steps": 2, "batch_size": 8},
                        engine={"ckpt_every_steps": 2}, eval={"knn_at_init": False, "knn_k": 5})
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(TRAIN), "--config", str(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env(), cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert sorted(losses(tmp_path / "run")) == [1, 2]
def test_accel_cli_steps_and_exact_resume(tmp_path, tiny_folder):
    """Accel-MoCo v2 on timm's test ResNet (small stem): the drawn stage, the per-stage queues and the
    EMA of the stage heads resume exactly (same losses for steps 3 and 4 from the step-2 checkpoint)."""
    opts = dict(model={"arch": "test_resnet", "small_stem": True}, optim={"max_steps": 4}, engine={"ckpt_every_steps": 2},
                eval={"knn_at_init": False, "knn_k": 5})
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir(), b_dir.mkdir()

    def config(folder):
        path = method_config(folder, tiny_folder, "mocov2", **opts)
        cfg = json.loads(path.read_text())
        cfg["method"]["accel"] = {"regions": 2, "stage_head": {"hidden_dim": 32, "out_dim": 16}}
        path.write_text(json.dumps(cfg))
        return path

    a = train(config(a_dir))
    assert a.returncode == 0, a.stderr[-3000:]
    want = losses(a_dir / "run")
    stages = [json.loads(line).get("accel_stage") for line in (a_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {s for s in stages if s is not None} <= {1.0, 2.0, 3.0, 4.0}
    b = train(config(b_dir), f"run.resume={a_dir / 'run' / 'checkpoints' / 'step2'}")
    assert b.returncode == 0, b.stderr[-3000:]
    got = losses(b_dir / "run")
    for step in (3, 4):
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (step, got, want)
