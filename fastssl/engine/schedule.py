"""Schedules laid out in optimizer steps: warm-up + cosine learning rate.

The EMA momentum schedule lives with the EMA target (``fastssl.models.ema.cosine_momentum``): the
methods call it, and they sit below the engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepPlan:
    """How long training is, in optimizer steps."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    global_batch: int
    peak_lr: float


def plan_steps(*, images_per_epoch: int, micro_batch: int, grad_accum: int, world_size: int, epochs: int,
               max_steps: int | None, warmup_epochs: float, base_lr: float) -> StepPlan:
    """LR = base_lr × global_batch / 256 (the linear scaling rule of SimCLR/MoCo/MAE)."""
    global_batch = micro_batch * grad_accum * world_size
    steps_per_epoch = images_per_epoch // global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"the global batch ({global_batch}) is larger than the training set ({images_per_epoch} images)")
    total = max_steps if max_steps is not None else epochs * steps_per_epoch
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    return StepPlan(steps_per_epoch, total, warmup, global_batch, base_lr * global_batch / 256)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based).

    Per-iteration linear warm-up (step s < W uses (s + 1) / W, so no step is wasted at LR 0), then
    a half cosine from 1 down to ``min_ratio`` at the last step.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(1, total_steps - warmup_steps - 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def group_lr(plan: StepPlan, min_ratio: float, lr_scale=None, fixed_lr: bool = False):
    """LR multiplier of one optimizer group at optimizer step ``s``: the warm-up + cosine factor
    (or 1 for a fixed-LR group) times the group's ``lr_scale(epoch)``. A plain function: LambdaLR
    leaves functions out of its state_dict (they are rebuilt from the config on resume), whereas
    it would try to pickle a callable object's attributes."""

    def factor(s: int) -> float:
        f = 1.0 if fixed_lr else lr_factor(s, warmup_steps=plan.warmup_steps, total_steps=plan.total_steps, min_ratio=min_ratio)
        return f * (1.0 if lr_scale is None else float(lr_scale(s / plan.steps_per_epoch)))

    return factor


def lr_scheduler(plan: StepPlan, min_ratio: float, groups=None):
    """A callable DeepSpeed turns into the client LR scheduler (stepped once per optimizer step and
    saved in its checkpoints). ``groups``: the ``ParamGroup`` of every optimizer group, in order
    (``engine.params.optimizer_groups``); None: one schedule for all."""

    def build(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        if groups is None:
            return torch.optim.lr_scheduler.LambdaLR(optimizer, group_lr(plan, min_ratio))
        if len(groups) != len(optimizer.param_groups):
            raise ValueError(f"{len(groups)} schedules for {len(optimizer.param_groups)} optimizer groups")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, [group_lr(plan, min_ratio, g.lr_scale, g.fixed_lr) for g in groups])

    return build
