"""LR scaling, warm-up/cosine plan, the derived DeepSpeed config and parameter groups."""
import math

import pytest
import torch
from torch import nn

from fastssl.config import TrainConfig
from fastssl.engine.ds_config import deepspeed_config
from fastssl.engine.params import optimizer_groups
from fastssl.methods.base import ParamGroup, one_group, trainable
from fastssl.models.ema import cosine_momentum
from fastssl.engine.schedule import lr_factor, lr_scheduler, plan_steps


def test_plan_scales_lr_linearly_and_counts_steps():
    plan = plan_steps(images_per_epoch=1000, micro_batch=32, grad_accum=2, world_size=2, epochs=3, max_steps=None, warmup_epochs=1, base_lr=1e-3)
    assert plan.global_batch == 128
    assert plan.steps_per_epoch == 1000 // 128
    assert plan.total_steps == 3 * (1000 // 128)
    assert plan.warmup_steps == 1000 // 128
    assert math.isclose(plan.peak_lr, 1e-3 * 128 / 256)


def test_plan_rejects_batch_larger_than_data():
    with pytest.raises(ValueError, match="larger than the training set"):
        plan_steps(images_per_epoch=10, micro_batch=32, grad_accum=1, world_size=1, epochs=1, max_steps=None, warmup_epochs=0, base_lr=1e-3)


def test_cosine_momentum_endpoints_and_monotone():
    values = [cosine_momentum(0.99, p / 10) for p in range(11)]
    assert math.isclose(values[0], 0.99) and math.isclose(values[-1], 1.0)
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_deepspeed_config_is_derived_and_merged():
    cfg = TrainConfig.model_validate({
        "data": {"dataset": "fashion-mnist"},
        "optim": {"batch_size": 16, "grad_accum": 4, "clip_grad": 1.5, "weight_decay": 0.1},
        "engine": {"zero_stage": 2, "precision": "bf16"},
        "deepspeed": {"zero_optimization": {"overlap_comm": True}, "steps_per_print": 7},
    })
    plan = plan_steps(images_per_epoch=10_000, micro_batch=16, grad_accum=4, world_size=2, epochs=2, max_steps=None, warmup_epochs=0.5, base_lr=1e-3)
    ds = deepspeed_config(cfg, plan, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 16 * 4 * 2
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert ds["gradient_clipping"] == 1.5 and ds["steps_per_print"] == 7
    assert ds["optimizer"]["params"]["lr"] == pytest.approx(plan.peak_lr)
    assert ds["optimizer"]["params"]["weight_decay"] == 0.1


def test_lr_schedule_is_linear_warmup_then_cosine():
    """The scheduler handed to DeepSpeed, stepped like DeepSpeed steps it, against the formula written out."""
    plan = plan_steps(images_per_epoch=1000, micro_batch=10, grad_accum=1, world_size=1, epochs=1, max_steps=None, warmup_epochs=0.1, base_lr=0.128)
    assert plan.total_steps == 100 and plan.warmup_steps == 10
    opt = torch.optim.SGD([nn.Parameter(torch.randn(2))], lr=plan.peak_lr)
    sched = lr_scheduler(plan, min_ratio=0.01)(opt)
    used = []
    for _ in range(plan.total_steps):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = 0.128 * 10 / 256
    for s in range(10):
        assert used[s] == pytest.approx(peak * (s + 1) / 10)
    for s in range(10, 100):
        cos = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 89))
        assert used[s] == pytest.approx(peak * cos)
    assert used[-1] == pytest.approx(peak * 0.01)
    assert lr_factor(0, warmup_steps=0, total_steps=5, min_ratio=0.0) == pytest.approx(1.0)


def test_param_groups_exclude_norms_biases_tokens():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.randn(1, 1, 4))
            self.pos_embed = nn.Parameter(torch.randn(1, 3, 4))
            self.fc = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)

    m = Tiny()
    groups, origin = optimizer_groups(one_group(m), 0.05)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(m.fc.weight)}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 5
    assert [g.name for g in origin] == ["all", "all"]


def test_group_schedules_fixed_lr_and_lr_scale():
    """Three method groups: the global schedule, a fixed LR (SimSiam's predictor), and a scale that is 0
    in the first epoch (SwAV's prototypes). Each optimizer group must follow its own formula."""
    a, b, c = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
    freeze_first_epoch = lambda epoch: 0.0 if epoch < 1 else 1.0  # noqa: E731
    groups = [ParamGroup("a", trainable(a)), ParamGroup("b", trainable(b, "b."), fixed_lr=True),
              ParamGroup("c", trainable(c, "c."), lr_scale=freeze_first_epoch)]
    torch_groups, origin = optimizer_groups(groups, 0.1)
    assert len(torch_groups) == 6 and [g.name for g in origin] == ["a", "a", "b", "b", "c", "c"]
    plan = plan_steps(images_per_epoch=40, micro_batch=10, grad_accum=1, world_size=1, epochs=5, max_steps=None,
                      warmup_epochs=1, base_lr=0.256)
    opt = torch.optim.SGD(torch_groups, lr=plan.peak_lr)
    sched = lr_scheduler(plan, 0.0, origin)(opt)
    for s in range(plan.total_steps):
        f = lr_factor(s, warmup_steps=plan.warmup_steps, total_steps=plan.total_steps, min_ratio=0.0)
        want = [plan.peak_lr * f] * 2 + [plan.peak_lr] * 2 + [plan.peak_lr * f * (0.0 if s < 4 else 1.0)] * 2
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(want), s
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="more than one"):
        optimizer_groups([ParamGroup("x", trainable(a)), ParamGroup("y", trainable(a))], 0.1)
