"""Issue 20's per-step levers that can be checked without a GPU: torch's fused AdamW is asked for on
CUDA (and only there), and the steady images/s leaves the steps before the first mark out."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastssl.config import load_config
from fastssl.engine.ds_config import deepspeed_config
from fastssl.engine.schedule import plan_steps
from fastssl.engine.session import Throughput

ROOT = Path(__file__).resolve().parents[2]


def _ds(monkeypatch, cuda: bool) -> dict:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = load_config("configs/imagenet/simclr.yaml", ["data.synthetic=true", "eval.enabled=false"])
    plan = plan_steps(images_per_epoch=10_000, micro_batch=256, grad_accum=1, world_size=1, epochs=1, max_steps=None,
                      warmup_epochs=0, base_lr=1e-3)
    return deepspeed_config(cfg, plan, 1)


def test_fused_adamw_on_cuda_only(monkeypatch):
    assert _ds(monkeypatch, True)["optimizer"]["params"]["fused"] is True
    assert "fused" not in _ds(monkeypatch, False)["optimizer"]["params"]
    assert _ds(monkeypatch, True)["optimizer"]["params"]["torch_adam"] is True  # torch's AdamW, not DeepSpeed's JIT one


def test_steady_rate_leaves_out_the_warm_up(monkeypatch):
    clock = iter([10.0, 11.0, 12.0, 12.5, 13.0, 14.0]).__next__
    monkeypatch.setattr("fastssl.engine.session.time.perf_counter", clock)
    t = Throughput(images_per_step=100)
    t._tick = 0.0                          # training starts at 0 s
    t.step_done()                          # step 1 ends at 10 s (compile)
    t.step_done()                          # step 2 at 11 s
    t.mark(2)                              # synced at 12 s
    assert t.steady_images_per_second is None
    t.step_done()                          # step 3 at 12.5 s
    t.step_done()                          # step 4 at 13 s
    t.mark(4)                              # synced at 14 s
    assert abs(t.steady_images_per_second - 100 * 2 / (14.0 - 12.0)) < 1e-9
    assert abs(t.images_per_second - 100 * 4 / 13.0) < 1e-9


@pytest.mark.parametrize("extra", [["engine.zero_stage=0", "engine.amp=autocast"],
                                   ["engine.zero_stage=0", "engine.amp=deepspeed"],
                                   ["engine.zero_stage=2", "engine.amp=deepspeed"]])
def test_engine_steps_never_synchronize_the_device(tmp_path, one_rank, monkeypatch, extra):
    """No host wait for the device inside an optimizer step (fastssl reads its clock at log steps only).
    DeepSpeed's throughput timer synchronised twice per step from step 2 on, by default: counted here
    through the accelerator DeepSpeed calls (torch.cuda.synchronize on a GPU, a no-op on CPU)."""
    from deepspeed.accelerator import get_accelerator

    from fastssl.engine.session import setup

    calls = []
    accel = get_accelerator()
    monkeypatch.setattr(type(accel), "synchronize", lambda self, device_index=None: calls.append(device_index))
    cfg = load_config(str(ROOT / "configs/imagenet/simclr.yaml"),
                      ["data.synthetic=true", "eval.enabled=false", f"run.output_dir={tmp_path / 'run'}", "run.resume=never",
                       "engine.progress=false", "engine.precision=bf16", "optim.batch_size=4", "optim.max_steps=4",
                       "optim.warmup_epochs=0", "data.image_size=16", "model.patch_size=4", "model.arch=test_vit",
                       "method.head.hidden_dim=32", "method.head.out_dim=16", *extra])
    s = setup(cfg)
    batches = iter(s.loader)
    calls.clear()  # set-up may wait; the steps may not
    for _ in range(4):
        out = s.engine(next(batches), s.context())
        s.engine.backward(out.loss)
        s.engine.step()
    assert calls == []
