"""Schedules laid out in optimizer steps: the LR one is handed to DeepSpeed, the momentum one is ours."""
from __future__ import annotations

import math
from dataclasses import dataclass


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


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's target-momentum schedule: base → 1 along a half cosine as progress goes 0 → 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1.0) / 2.0
