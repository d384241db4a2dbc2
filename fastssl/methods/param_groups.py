"""Parameter groups as a method declares them: which parameters, and how their LR moves.

The engine splits every group further into decayed / non-decayed parameters (``engine/params.py``)
and turns ``lr_scale`` / ``fixed_lr`` into that group's LR schedule (``engine/schedule.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn


def _one(epoch: float) -> float:
    return 1.0


@dataclass(frozen=True)
class ParamGroup:
    """``params``: (qualified name, parameter) pairs; the name decides weight decay.

    ``lr_scale(epoch) -> float`` multiplies the group's LR (epoch is fractional); e.g. SwAV's
    prototypes use 0 during the first epoch. ``fixed_lr``: the group skips warm-up and cosine decay
    and stays at the peak LR × ``lr_scale`` (SimSiam's predictor, as in its official code).
    """

    name: str
    params: tuple[tuple[str, nn.Parameter], ...]
    lr_scale: Callable[[float], float] = field(default=_one)
    fixed_lr: bool = False


def trainable(module: nn.Module, prefix: str = "") -> tuple[tuple[str, nn.Parameter], ...]:
    """The parameters of ``module`` that take gradients, with qualified names."""
    return tuple((f"{prefix}{n}", p) for n, p in module.named_parameters() if p.requires_grad)


def one_group(module: nn.Module) -> list[ParamGroup]:
    """Every trainable parameter in one group following the global schedule."""
    return [ParamGroup("all", trainable(module))]
