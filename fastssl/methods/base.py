"""The method contract: what a method is, what it is given, what it returns. One page.

A method is one file holding its pydantic config and a ``MethodModule`` (an ``nn.Module``):

    Config                                   its config section (``name: Literal["..."]``)
    __init__(cfg, encoder)                   builds its heads around the given encoder
    encoder                                  what kNN, the linear probe and export use
    crops() -> tuple[CropSpec, ...]          what the data pipeline makes for it (``data/crops.py``)
    forward(batch, ctx) -> StepOutput        loss + detached metrics; ``batch``: ``data/batch.py``,
                                             ``ctx``: ``StepContext`` below
    param_groups() -> list[ParamGroup]       which parameters, and how their LR moves (below)
    after_step(ctx)                          optional: EMA targets, queues; after every optimizer step
    unit_rows() -> list[Parameter]           optional: weights the trainer keeps at unit-L2 rows after
                                             every optimizer step, in the optimizer's fp32 copy
                                             (SwAV's prototypes; ``engine/unit_rows.py``)

Adding one: its file, a line in ``registry.METHODS`` (the config's ``method:`` union and
``build_method`` come from that list), its configs. The engine never names a method; it talks to
``Method`` / ``AfterStep`` only. Pieces several methods share are in ``parts.py``; a ResNet method
that can take a loss after every stage implements ``accel.Staged``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn


@dataclass
class StepOutput:
    """``loss``: the scalar to back-propagate. ``metrics``: detached scalars for the logs only."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(Protocol):
    """The contract every method meets; ``MethodModule`` is the base they derive from. A static type
    only: from Python 3.12 an ``isinstance`` check of a protocol reads attributes with
    ``inspect.getattr_static``, which does not see an ``nn.Module``'s registered submodules (``encoder``)."""

    encoder: nn.Module

    def crops(self) -> tuple: ...

    def param_groups(self) -> list: ...

    def forward(self, batch, ctx) -> StepOutput: ...


class MethodModule(nn.Module):
    """What every method derives from: an ``nn.Module`` with its config section ``cfg`` and its
    ``encoder`` (registered first, so its parameters lead the state_dict)."""

    def __init__(self, cfg, encoder: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder


@runtime_checkable
class UnitRows(Protocol):
    """Optional: weights to be kept at unit-L2 rows after every optimizer step (SwAV's prototypes). The
    trainer normalises the optimizer's fp32 copy, which an in-place write in the forward does not reach
    under DeepSpeed's bf16 or ZeRO 1 / 2 (``fastssl/engine/unit_rows.py``)."""

    def unit_rows(self) -> list: ...


@runtime_checkable
class AfterStep(Protocol):
    """Optional hook, called after every optimizer step with that step's context (EMA/momentum updates)."""

    def after_step(self, ctx) -> None: ...


@dataclass(frozen=True)
class StepContext:
    """The optimizer step being taken (0-based ``step``: steps done before this one).

    ``epoch`` is fractional (``step / steps_per_epoch``), so schedules such as DAC's
    λ = 0.24·0.996^epoch or SwAV's frozen prototypes need no loader state. ``micro_step`` counts
    the micro-batches of this step under gradient accumulation.
    """

    step: int
    steps_per_epoch: int
    total_steps: int
    seed: int
    micro_step: int = 0

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of training done before this step, in [0, 1)."""
        return self.step / self.total_steps

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator seeded by (run seed, step, micro-step): the same numbers on every rank
        and after a resume, and independent of the global RNG (data order, dropout)."""
        seed = int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.step, self.micro_step]).generate_state(1, np.uint64)[0])
        g = torch.Generator(device=device)
        g.manual_seed(seed & ((1 << 63) - 1))
        return g


def _one(epoch: float) -> float:
    return 1.0


@dataclass(frozen=True)
class ParamGroup:
    """``params``: (qualified name, parameter) pairs; the name decides weight decay.

    ``lr_scale(epoch) -> float`` multiplies the group's LR (epoch is fractional); e.g. SwAV's
    prototypes use 0 during the first epoch. ``fixed_lr``: the group skips warm-up and cosine decay
    and stays at the peak LR × ``lr_scale`` (SimSiam's predictor, as in its official code).
    The engine splits every group further into decayed / non-decayed parameters
    (``engine/params.py``) and turns ``lr_scale`` / ``fixed_lr`` into its LR schedule
    (``engine/schedule.py``).
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
